//! Engine #1 of Lockstep: a deterministic multi-core x86-64 emulated on
//! unicorn-engine. All vCPUs run on the calling thread, one unicorn
//! instance each, round-robin in instruction-counted quanta drawn by a
//! seeded scheduler; guest memory is one host buffer mapped into every
//! instance. Same image, same seed, same inputs: same run, bit for bit.
//!
//! Time: one instruction is one nanosecond of guest time. A vCPU that
//! executes `hlt` idles for the rest of its quantum, and when every vCPU
//! sleeps the clock jumps to the next wake deadline, so guest time does
//! not depend on how a run is cut into [`Engine::run`] calls.
//!
//! With the PC platform on the bus ([`machine::pc`]), the APIC pages are
//! MMIO into it and the local APIC's interrupts are delivered through the
//! guest's IDT at slice boundaries, slices ending at its timer deadlines;
//! RDMSR/WRMSR of IA32_APIC_BASE and IA32_TSC_DEADLINE reach it, and
//! CPUID leaf 1 offers the TSC-deadline timer (`platform.rs`). An
//! application processor whose local APIC waits for a start-up IPI is
//! not scheduled; the platform's INIT and start-up IPIs are applied at
//! the end of the slice that sent them (`startup.rs`), a started vCPU
//! running its real-mode trampoline on its instance created in 64-bit
//! mode (`regs.rs` takes an instance out of long mode).
//!
//! Limits, by design or by unicorn:
//! - Reads of the clock port inside a quantum return the quantum's start
//!   time; rdtsc returns that or one more than its last value.
//! - Guest code is text: each instance keeps its own translations, so code
//!   written by one vCPU is not seen by another that already ran it, and
//!   the first write to a write-protected page (performed by the hook)
//!   bypasses self-modifying-code detection.
//! - Under [`DirtyTracking::WriteProtect`] (the default): the page
//!   walker's accessed/dirty-bit writes are not tracked as dirty, so page
//!   tables must have those bits set (the boot tables do); and every
//!   protection change makes unicorn rebuild its memory map, whose size
//!   grows with the pages made writable, so a page stays protected (each
//!   store through the hook) until it is written a few times in an epoch;
//!   only hot pages cost protection changes. [`DirtyTracking::Log`] has
//!   neither limit (`dirty_log.rs`) but counts no dirty faults.
//! - x87/SSE state is not part of [`VcpuState`]; the guests do not use it.

mod backing;
pub use backing::Backing;
mod dirty_log;
mod fault;
pub use fault::listing;
mod hooks;
pub mod linux;
mod platform;
mod ram;
pub mod raw;
mod regs;
mod sched;
mod startup;
mod virtio;

use std::cell::RefCell;
use std::rc::Rc;

use std::collections::BTreeSet;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};
use machine::codec::{Reader, Writer};
use machine::guests::GuestImage;
use machine::layout::GUEST_CODE;
use machine::rng::SplitMix64;
use machine::{
    DeviceBus, Engine, EngineError, EngineStats, FaultKind, Gpa, GuestNs, Instructions, PageIndex,
    RunExit, RunState, Shape, VcpuId, VcpuState, PAGE_SIZE,
};
use unicorn_engine::unicorn_const::{uc_error, Arch, Mode, Prot, X86CpuModel};
use unicorn_engine::{RegisterX86, UcHookId, Unicorn};

use hooks::{Delivery, HookState, Shared, Vcpu};
pub use sched::Quantum;
use sched::Scheduler;

/// How the emulated engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmuConfig {
    /// Seeds the scheduler and rdrand.
    pub seed: u64,
    /// Quantum lengths.
    pub quantum: Quantum,
}

fn backend(error: uc_error) -> EngineError {
    EngineError::Backend(format!("unicorn: {error:?}"))
}

/// How the engine finds the pages a checkpoint delta must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyTracking {
    /// Write-protect every page at each checkpoint and catch the first
    /// writes: deltas hold only the pages written.
    WriteProtect,
    /// Map all of RAM writable and report every page dirty: deltas are
    /// whole memory, but guest stores run at full speed. For a guest that
    /// writes much of memory once (a kernel decompressing itself), where
    /// write-protection costs a hooked store per write and a memory-map
    /// rebuild, growing with the pages opened, per hot page.
    EveryPage,
    /// Map all of RAM writable and take the pages written from our
    /// unicorn patch's dirty log (`dirty_log.rs`): deltas hold only the
    /// pages written (the page walker's accessed/dirty bits included), the
    /// first store to a page per epoch takes a slow path and later ones
    /// run at full speed. It counts no dirty faults
    /// ([`EngineStats::dirty_faults`] stays put), so a node driver that
    /// ends epochs by that count ends them by time only.
    Log,
}

/// Whether the last slice of a vCPU ended in `hlt`.
enum SliceEnd {
    Ran,
    Halted,
}

/// What a slice did: how it ended and how many instructions it ran (as a
/// code hook on every instruction would count them: see the BUDGET
/// pseudo-register in our patch's include/unicorn/x86.h).
struct Slice {
    end: SliceEnd,
    instructions: u64,
}

/// The emulated engine.
pub struct EmuEngine {
    // Declared first so they drop first: the instances hold raw pointers
    // into `ram` and `shared`.
    vcpus: Vec<Vcpu>,
    /// Per instance, the pages made writable in it since the last
    /// checkpoint (all others are write-protected there).
    writable: Vec<std::collections::BTreeSet<u32>>,
    /// Per instance, the hook that catches writes to protected pages,
    /// while pages are protected (the hook alone keeps every store on
    /// unicorn's slow path).
    write_protect_hooks: Vec<Option<UcHookId>>,
    shared: Shared,
    /// The RAM as the virtio devices write it; dropped before the RAM.
    device_memory: ram::DeviceMemory,
    ram: ram::GuestRam,
    shape: Shape,
    halts: Halts,
    boot_states: Vec<VcpuState>,
    run_states: Vec<RunState>,
    /// Guest time until which each vCPU makes no progress (an injected
    /// stall: host-side, not guest state, so no checkpoint carries it).
    stalled_until: Vec<u64>,
    sched: Scheduler,
    now: u64,
    budget_end: u64,
    code_stale: bool,
    instructions: u64,
    vcpu_switches: u64,
    /// Whether the instances map the PC platform's APIC pages (done at the
    /// first run with a bus that has the platform).
    platform_mapped: bool,
    dirty_tracking: DirtyTracking,
    /// Pages of the dirty logs fetched between checkpoints
    /// ([`EmuEngine::share_stores`]), for the next [`Engine::take_dirty_pages`].
    logged: Option<Vec<u64>>,
}

impl std::fmt::Debug for EmuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmuEngine")
            .field("shape", &self.shape)
            .field("now", &self.now)
            .field("run_states", &self.run_states)
            .finish_non_exhaustive()
    }
}

/// The `hlt` instructions of a guest image, found by a linear sweep.
#[derive(Debug, Default)]
struct Halts {
    /// Every `hlt`.
    all: BTreeSet<u64>,
    /// The `hlt`s whose next address some branch may also reach: for
    /// these, rip = hlt + 1 after a slice does not prove the `hlt` ran, so
    /// a code hook marks it (a code hook slows every instruction by about
    /// a quarter, so only where needed).
    hooked: Vec<u64>,
    /// Every `pause` (a spin-wait hint): the vCPU that executes one gives
    /// up the rest of its quantum, as pause-loop exiting deschedules a
    /// spinning vCPU on real hardware. The spin's guest time still passes;
    /// only its emulation is skipped.
    pauses: Vec<u64>,
    /// The guest's code was not swept (a kernel booted by
    /// [`EmuEngine::boot`]): then a slice that stops short of its budget
    /// for none of the hooks' reasons stopped at a `hlt` (QEMU's
    /// EXCP_HLT ends emu_start right after it).
    unswept: bool,
}

impl Halts {
    /// The `hlt`s of a guest whose code is not known: any.
    fn unswept() -> Halts {
        Halts {
            unswept: true,
            ..Halts::default()
        }
    }

    fn of(image: &GuestImage) -> Halts {
        let mut halts = Halts::default();
        let mut targets = BTreeSet::new();
        let mut indirect = false;
        for instruction in
            Decoder::with_ip(64, &image.code, GUEST_CODE.0, DecoderOptions::NONE).iter()
        {
            match instruction.flow_control() {
                FlowControl::IndirectBranch | FlowControl::IndirectCall | FlowControl::Return => {
                    indirect = true
                }
                FlowControl::UnconditionalBranch
                | FlowControl::ConditionalBranch
                | FlowControl::Call => {
                    targets.insert(instruction.near_branch_target());
                }
                _ => {}
            }
            match instruction.mnemonic() {
                Mnemonic::Hlt => {
                    halts.all.insert(instruction.ip());
                }
                Mnemonic::Pause => halts.pauses.push(instruction.ip()),
                _ => {}
            }
        }
        halts.hooked = halts
            .all
            .iter()
            .copied()
            .filter(|at| indirect || targets.contains(&(at + 1)))
            .collect();
        halts
    }

    /// Whether a slice that left rip at `rip` ended by executing `hlt`;
    /// `hooked_hit` is the hooked `hlt` that ran in the slice, if any.
    fn ended_in_hlt(&self, rip: u64, hooked_hit: Option<u64>) -> bool {
        let Some(at) = rip.checked_sub(1) else {
            return false;
        };
        self.all.contains(&at) && (!self.hooked.contains(&at) || hooked_hit == Some(at))
    }
}

impl EmuEngine {
    /// Boots `image` on a machine of `shape`.
    pub fn new(
        shape: Shape,
        image: &GuestImage,
        config: EmuConfig,
    ) -> Result<EmuEngine, EngineError> {
        let memory = image.boot_memory(&shape);
        let boot_states: Vec<VcpuState> = (0..shape.vcpus())
            .map(|v| machine::boot::initial_vcpu_state(&shape, v))
            .collect();
        EmuEngine::start(shape, &memory, boot_states, Halts::of(image), config)
    }

    /// Boots a machine of `shape` from `memory` with each vCPU in
    /// `boot_states`: a guest that is not one of the assembled images (a
    /// Linux kernel laid out by [`machine::linux::load`]). Its code is not
    /// swept for `hlt` and `pause`: a slice that stopped short at a `hlt`
    /// halts the vCPU until an interrupt it takes (a kernel's idle loop
    /// sleeps instead of spinning through its quanta), and a `pause` does
    /// not yield.
    pub fn boot(
        shape: Shape,
        memory: &[u8],
        boot_states: Vec<VcpuState>,
        config: EmuConfig,
    ) -> Result<EmuEngine, EngineError> {
        if memory.len() as u64 != shape.memory_bytes()
            || boot_states.len() != usize::from(shape.vcpus())
        {
            return Err(EngineError::Backend(format!(
                "boot: {} bytes and {} vCPU states for {shape:?}",
                memory.len(),
                boot_states.len()
            )));
        }
        EmuEngine::start(shape, memory, boot_states, Halts::unswept(), config)
    }

    /// A machine of `shape` whose memory is all zero and whose vCPUs are
    /// in `states`, for a restore to fill ([`machine::Machine::restore`]):
    /// nothing is copied or scanned, and the host backs a page only once
    /// it is written. Its code is not swept, as with [`EmuEngine::boot`].
    pub fn blank(
        shape: Shape,
        states: Vec<VcpuState>,
        config: EmuConfig,
    ) -> Result<EmuEngine, EngineError> {
        if states.len() != usize::from(shape.vcpus()) {
            return Err(EngineError::Backend(format!(
                "blank: {} vCPU states for {shape:?}",
                states.len()
            )));
        }
        EmuEngine::start(shape, &[], states, Halts::unswept(), config)
    }

    fn start(
        shape: Shape,
        memory: &[u8],
        boot_states: Vec<VcpuState>,
        halts: Halts,
        config: EmuConfig,
    ) -> Result<EmuEngine, EngineError> {
        let bytes = usize::try_from(shape.memory_bytes()).expect("guest memory fits the host");
        let ram = ram::GuestRam::new(bytes, memory);
        let shared: Shared = Rc::new(RefCell::new(HookState::new(
            shape.vcpus(),
            shape.pages(),
            config.seed,
            ram.as_mut_ptr(),
        )));
        let mut vcpus = Vec::new();
        let mut write_protect_hooks = Vec::new();
        for (v, state) in boot_states.iter().enumerate() {
            let vcpu = VcpuId(u16::try_from(v).expect("at most 8 vCPUs"));
            let (uc, hook) = new_instance(&ram, vcpu, &shared, &halts, state).map_err(backend)?;
            vcpus.push(uc);
            write_protect_hooks.push(Some(hook));
        }
        Ok(EmuEngine {
            writable: vec![std::collections::BTreeSet::new(); vcpus.len()],
            write_protect_hooks,
            vcpus,
            shared,
            device_memory: ram.device_memory(),
            ram,
            shape,
            halts,
            run_states: vec![RunState::Running; usize::from(shape.vcpus())],
            stalled_until: vec![0; usize::from(shape.vcpus())],
            boot_states,
            sched: Scheduler::new(config.seed, config.quantum),
            now: 0,
            budget_end: 0,
            code_stale: false,
            instructions: 0,
            vcpu_switches: 0,
            platform_mapped: false,
            dirty_tracking: DirtyTracking::WriteProtect,
            logged: None,
        })
    }

    /// Draws the scheduler's quanta and rdrand from `seed` from now on, as
    /// a machine started with it would (its checkpoint carries both
    /// generators' states): runs restored from one checkpoint, such as a
    /// booted Linux guest's, then interleave by their own seeds. The
    /// quantum under way is kept.
    pub fn reseed(&mut self, seed: u64) {
        self.sched.reseed(seed);
        self.shared.borrow_mut().reseed(seed);
    }

    /// Switches how dirty pages are found (engines start with
    /// [`DirtyTracking::WriteProtect`]); only away from write-protection,
    /// which opens all of RAM for writing in every instance. The pages
    /// written before the switch stay dirty until the next
    /// [`Engine::take_dirty_pages`].
    pub fn set_dirty_tracking(&mut self, tracking: DirtyTracking) -> Result<(), EngineError> {
        match (self.dirty_tracking, tracking) {
            (DirtyTracking::WriteProtect, DirtyTracking::EveryPage | DirtyTracking::Log) => {
                self.open_all_ram()?;
                if tracking == DirtyTracking::Log {
                    for uc in &mut self.vcpus {
                        dirty_log::start(uc, self.shape.pages()).map_err(backend)?;
                    }
                }
                self.dirty_tracking = tracking;
                Ok(())
            }
            (now, wanted) if now == wanted => Ok(()),
            (now, wanted) => Err(EngineError::Backend(format!(
                "dirty tracking {now:?} cannot become {wanted:?}"
            ))),
        }
    }

    /// Makes all of RAM writable in every instance and removes the
    /// write-protection hooks; the pages they saw written stay dirty.
    fn open_all_ram(&mut self) -> Result<(), EngineError> {
        let len = self.ram.len();
        let instances = self.vcpus.iter_mut().zip(&mut self.writable);
        for ((uc, writable), hook) in instances.zip(&mut self.write_protect_hooks) {
            uc.mem_protect(0, len, Prot::ALL).map_err(backend)?;
            if let Some(hook) = hook.take() {
                uc.remove_hook(hook).map_err(backend)?;
            }
            uc.ctl_flush_tlb().map_err(backend)?;
            writable.clear();
        }
        self.shared.borrow_mut().hooked_writes.fill(0);
        Ok(())
    }

    /// Keeps the other vCPUs from running stale translations of code that
    /// vCPU `v` rewrote: the pages it wrote since its dirty log was last
    /// fetched (fetched now, and kept for the epoch's checkpoint) lose
    /// their translations in every other instance. Each instance drops
    /// its own stale code as QEMU does, but knows nothing of the others',
    /// and a kernel rewrites its text on one vCPU while the others have it
    /// translated (static keys and `text_poke`, module loading). Done when
    /// `v` sends an IPI, which is how x86 code tells the others to look
    /// (Linux's `text_poke_sync`, TLB shootdowns), and at every fetch of
    /// the logs ([`EmuEngine::take_logged_pages`]); not after every slice,
    /// which would fetch the log millions of times a boot.
    fn share_stores(&mut self, v: usize) -> Result<(), EngineError> {
        if self.vcpus.len() < 2 || self.dirty_tracking != DirtyTracking::Log {
            return Ok(());
        }
        let mut written = dirty_log::bitmap(self.shape.pages());
        dirty_log::fetch_into(&mut self.vcpus[v], &mut written).map_err(backend)?;
        self.invalidate_in_others(v, &written)?;
        let kept = self
            .logged
            .get_or_insert_with(|| dirty_log::bitmap(self.shape.pages()));
        for (kept, word) in kept.iter_mut().zip(&written) {
            *kept |= word;
        }
        Ok(())
    }

    /// Drops the translations of the pages set in `written` in every
    /// instance but `v`'s.
    fn invalidate_in_others(&mut self, v: usize, written: &[u64]) -> Result<(), EngineError> {
        for page in dirty_log::pages(written) {
            for (i, uc) in self.vcpus.iter_mut().enumerate() {
                if i != v {
                    dirty_log::drop_translations(uc, page.0).map_err(backend)?;
                }
            }
        }
        Ok(())
    }

    /// The pages written since the last call by the instances (their dirty
    /// logs, and what [`EmuEngine::share_stores`] fetched of them) and
    /// from the host side (devices, `write_memory`), in order.
    fn take_logged_pages(&mut self) -> Result<Vec<PageIndex>, EngineError> {
        let mut words = self
            .logged
            .take()
            .unwrap_or_else(|| dirty_log::bitmap(self.shape.pages()));
        for v in 0..self.vcpus.len() {
            let mut written = dirty_log::bitmap(self.shape.pages());
            dirty_log::fetch_into(&mut self.vcpus[v], &mut written).map_err(backend)?;
            if self.vcpus.len() > 1 {
                self.invalidate_in_others(v, &written)?;
            }
            for (word, got) in words.iter_mut().zip(&written) {
                *word |= got;
            }
        }
        let mut state = self.shared.borrow_mut();
        for page in std::mem::take(&mut state.dirty_list) {
            state.dirty[page as usize] = false;
            dirty_log::set(&mut words, page);
        }
        Ok(dirty_log::pages(&words))
    }

    /// Fault injection: vCPU `vcpu` makes no progress for `for_ns` of guest
    /// time from now (the other vCPUs run on; one that waits for a lock the
    /// stalled vCPU holds spins).
    pub fn stall_vcpu(&mut self, vcpu: VcpuId, for_ns: u64) -> Result<(), EngineError> {
        let until = self.now.saturating_add(for_ns);
        let slot = self
            .stalled_until
            .get_mut(usize::from(vcpu.0))
            .ok_or(EngineError::NoSuchVcpu(vcpu.0))?;
        *slot = until;
        if self.sched.current == vcpu.0 {
            self.sched.remaining = 0; // its quantum ends now
        }
        Ok(())
    }

    fn check_range(&self, gpa: Gpa, len: usize) -> Result<(), EngineError> {
        if gpa
            .0
            .checked_add(len as u64)
            .is_none_or(|end| end > self.ram.len())
        {
            return Err(EngineError::OutOfRange { gpa, len });
        }
        Ok(())
    }

    /// Wakes halted vCPUs that have an event (at quantum boundaries): a
    /// device's, or an interrupt of the PC platform (its timers due now
    /// fired first) that the vCPU takes.
    fn wake(&mut self) -> Result<(), EngineError> {
        // A packet that arrived meanwhile, before anyone wakes for it.
        virtio::serve(
            &mut self.vcpus,
            &self.shared,
            &self.device_memory,
            VcpuId(0),
        )?;
        let mut state = self.shared.borrow_mut();
        let now = GuestNs(self.now);
        if let Some(pc) = state.bus.pc_mut() {
            pc.advance(now);
        }
        for (v, run_state) in self.run_states.iter_mut().enumerate() {
            let vcpu = VcpuId(v as u16);
            if *run_state != RunState::Halted {
                continue;
            }
            if state.bus.wake_pending(vcpu, now) {
                *run_state = RunState::Running;
                state.bus.woke(vcpu, now);
            } else if platform::wakes(&state, &self.vcpus[v], vcpu).map_err(backend)? {
                *run_state = RunState::Running;
            }
        }
        Ok(())
    }

    /// Maps the PC platform's pages into every instance, once, if the bus
    /// has the platform.
    fn map_platform(&mut self) -> Result<(), EngineError> {
        if self.platform_mapped || self.shared.borrow().bus.pc().is_none() {
            return Ok(());
        }
        for (v, uc) in self.vcpus.iter_mut().enumerate() {
            let vcpu = VcpuId(u16::try_from(v).expect("at most 8 vCPUs"));
            platform::map_mmio(uc, vcpu, &self.shared).map_err(backend)?;
            platform::install_msr_hooks(uc, &self.shared).map_err(backend)?;
            let state = self.shared.borrow();
            let pc = state.bus.pc().expect("checked above");
            platform::advertise(uc, pc, vcpu).map_err(backend)?;
        }
        self.platform_mapped = true;
        Ok(())
    }

    /// A slice of at most `slice` instructions that ends at the PC
    /// platform's next timer deadline.
    fn platform_slice(&self, slice: u64) -> u64 {
        let state = self.shared.borrow();
        match state.bus.pc().and_then(machine::pc::Pc::next_deadline) {
            Some(deadline) if deadline.0 > self.now => slice.min(deadline.0 - self.now),
            _ => slice,
        }
    }

    /// Runs vCPU `v` for a slice, its local APIC's interrupt offered at
    /// the start (its timers due fired first) and acknowledged if taken.
    fn execute_offered(&mut self, v: usize, slice: u64) -> Result<Slice, EngineError> {
        let vcpu = VcpuId(u16::try_from(v).expect("at most 8 vCPUs"));
        self.opt_in_to_delivery(v)?;
        {
            let mut state = self.shared.borrow_mut();
            if let Some(pc) = state.bus.pc_mut() {
                pc.advance(GuestNs(self.now));
            }
            if state.delivery[v] == Delivery::Idt {
                platform::offer(&mut self.vcpus[v], &mut state, vcpu).map_err(backend)?;
            }
        }
        self.shared.borrow_mut().running = Some(vcpu);
        let end = self.execute(v, slice);
        let mut state = self.shared.borrow_mut();
        state.running = None;
        platform::note_taken(&self.vcpus[v], &mut state, vcpu);
        drop(state);
        // The queues the vCPU notified during its slice.
        virtio::serve(&mut self.vcpus, &self.shared, &self.device_memory, vcpu)?;
        end
    }

    fn run_inner(&mut self, budget: Instructions) -> Result<RunExit, EngineError> {
        if self.code_stale {
            for uc in &mut self.vcpus {
                uc.ctl_flush_tb().map_err(backend)?;
            }
            self.code_stale = false;
        }
        self.map_platform()?;
        // Those a checkpoint carried, before any vCPU runs.
        self.apply_platform_actions()?;
        self.budget_end += budget.0;
        while self.now < self.budget_end {
            if self.sched.remaining == 0 && !self.start_quantum()? {
                continue;
            }
            let v = usize::from(self.sched.current);
            let slice = self.platform_slice(self.sched.remaining.min(self.budget_end - self.now));
            let waits = startup::waits(&self.shared.borrow(), VcpuId(v as u16));
            if self.run_states[v] == RunState::Running && !waits {
                let ran = self.execute_offered(v, slice)?;
                if std::mem::take(&mut self.shared.borrow_mut().ipi_sent) {
                    self.share_stores(v)?;
                }
                self.instructions += ran.instructions;
                if let SliceEnd::Halted = ran.end {
                    self.run_states[v] = RunState::Halted;
                }
                self.apply_platform_actions()?;
            }
            self.now += slice;
            self.sched.remaining -= slice;
            let (wait, yielded) = {
                let mut state = self.shared.borrow_mut();
                (
                    std::mem::take(&mut state.disk_wait_ns),
                    std::mem::take(&mut state.yielded),
                )
            };
            if yielded {
                self.sched.remaining = 0;
            }
            if wait > 0 {
                // The vCPU waits for its disk command; the others run on.
                let until = self.now.saturating_add(wait);
                self.stalled_until[v] = self.stalled_until[v].max(until);
                self.sched.remaining = 0;
            }
        }
        // Only looks: waking here would make the run depend on where it
        // was cut (vCPUs wake at quantum boundaries only).
        let state = self.shared.borrow();
        let now = GuestNs(self.now);
        let mut idle = true;
        for (v, s) in self.run_states.iter().enumerate() {
            let vcpu = VcpuId(v as u16);
            if startup::waits(&state, vcpu) {
                continue; // only a start-up IPI, another vCPU's, wakes it
            }
            idle &= *s == RunState::Halted
                && !state.bus.wake_pending(vcpu, now)
                && !state.bus.virtio_wants_service()
                && !platform::wakes(&state, &self.vcpus[v], vcpu).map_err(backend)?;
        }
        Ok(if idle {
            RunExit::Idle
        } else {
            RunExit::BudgetSpent
        })
    }

    /// Picks the next quantum; if no vCPU can run, jumps the clock to the
    /// next deadline (or the budget's end) and returns false.
    fn start_quantum(&mut self) -> Result<bool, EngineError> {
        self.wake()?;
        let (run_states, stalled_until, now) = (&self.run_states, &self.stalled_until, self.now);
        let shared = self.shared.borrow();
        let runnable = |v: u16| {
            run_states[usize::from(v)] == RunState::Running
                && stalled_until[usize::from(v)] <= now
                && !startup::waits(&shared, VcpuId(v))
        };
        let next = self.sched.next(self.shape.vcpus(), runnable);
        drop(shared);
        match next {
            Some(switched) => {
                self.vcpu_switches += u64::from(switched);
                self.shared.borrow_mut().quantum_start = GuestNs(self.now);
                Ok(true)
            }
            None => {
                let deadline = self.shared.borrow().bus.next_deadline();
                let stall_end = self
                    .stalled_until
                    .iter()
                    .copied()
                    .filter(|&t| t > self.now)
                    .min();
                let deadline = match (deadline.map(|d| d.0), stall_end) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let next = deadline.map_or(self.budget_end, |d| d.max(self.now + 1));
                self.now = next.min(self.budget_end);
                Ok(false)
            }
        }
    }

    /// A vCPU delivers through the IDT once its guest has one: checked at
    /// every slice start until it does (at slice boundaries, so
    /// deterministic; an exception in the slice that loads the first IDT
    /// is still an error).
    fn opt_in_to_delivery(&mut self, v: usize) -> Result<(), EngineError> {
        if self.shared.borrow().delivery[v] == Delivery::Idt {
            return Ok(());
        }
        let uc = &mut self.vcpus[v];
        if regs::idt_limit(uc).map_err(backend)? != 0 {
            uc.reg_write(regs::pseudo::DELIVER, 1).map_err(backend)?;
            self.shared.borrow_mut().delivery[v] = Delivery::Idt;
        }
        Ok(())
    }

    /// Raises external interrupt `vector` on `vcpu` (on a machine without
    /// the PC platform: with one, its local APIC decides what is raised,
    /// at every slice start): QEMU takes it at the
    /// next instruction boundary where IF is set and no interrupt shadow
    /// holds, once. Called between runs, so between instruction-counted
    /// slices: deterministic. A halted vCPU with IF set wakes. One vector
    /// is pending at most (a later raise replaces it): the interrupt
    /// controller, not the CPU, queues them.
    pub fn raise_interrupt(&mut self, vcpu: VcpuId, vector: u8) -> Result<(), EngineError> {
        let v = usize::from(vcpu.0);
        if v >= self.vcpus.len() {
            return Err(EngineError::NoSuchVcpu(vcpu.0));
        }
        self.opt_in_to_delivery(v)?;
        if self.shared.borrow().delivery[v] != Delivery::Idt {
            return Err(EngineError::NoInterruptDelivery(vcpu.0));
        }
        let uc = &mut self.vcpus[v];
        uc.reg_write(regs::pseudo::IRQ, u64::from(vector))
            .map_err(backend)?;
        const IF: u64 = 1 << 9;
        let rflags = uc.reg_read(RegisterX86::RFLAGS).map_err(backend)?;
        if self.run_states[v] == RunState::Halted && rflags & IF != 0 {
            self.run_states[v] = RunState::Running;
        }
        Ok(())
    }

    /// The interrupt raised on `vcpu` and not yet taken.
    pub fn pending_interrupt(&self, vcpu: VcpuId) -> Result<Option<u8>, EngineError> {
        let uc = self
            .vcpus
            .get(usize::from(vcpu.0))
            .ok_or(EngineError::NoSuchVcpu(vcpu.0))?;
        regs::pending_interrupt(uc).map_err(backend)
    }

    /// Runs vCPU `v` for `slice` instructions or until it halts.
    fn execute(&mut self, v: usize, slice: u64) -> Result<Slice, EngineError> {
        self.opt_in_to_delivery(v)?;
        let uc = &mut self.vcpus[v];
        let rip = uc.reg_read(RegisterX86::RIP).map_err(backend)?;
        {
            let mut state = self.shared.borrow_mut();
            state.halting = None;
            state.slice_start = Some(rip);
        }
        // A budget of 0 means "no budget" (then emu_start runs unbounded).
        assert!(slice > 0, "an empty slice would run unbounded");
        uc.reg_write(regs::pseudo::BUDGET, slice).map_err(backend)?;
        let result = uc.emu_start(rip, 0, 0, 0);
        let left = uc.reg_read(regs::pseudo::BUDGET).map_err(backend)?;
        assert!(
            left <= slice,
            "the budget only shrinks: {left} of {slice} left"
        );
        let instructions = slice - left;
        let unprotect = std::mem::take(&mut self.shared.borrow_mut().unprotect);
        for &page in &unprotect {
            let gpa = u64::from(page) * PAGE_SIZE;
            uc.mem_protect(gpa, PAGE_SIZE, Prot::ALL).map_err(backend)?;
            self.writable[v].insert(page);
        }
        if !unprotect.is_empty() {
            uc.ctl_flush_tlb().map_err(backend)?;
        }
        let fault = self.shared.borrow_mut().fault.take();
        let kind = match (fault, result) {
            (Some((_, kind)), _) => kind,
            (None, Ok(())) => {
                let halting = self.shared.borrow_mut().halting.take();
                let rip = uc.reg_read(RegisterX86::RIP).map_err(backend)?;
                let hooks_stopped = {
                    let state = self.shared.borrow();
                    state.yielded || state.disk_wait_ns > 0
                };
                let halted = self.halts.ended_in_hlt(rip, halting)
                    || (self.halts.unswept && instructions < slice && !hooks_stopped);
                let end = if halted {
                    SliceEnd::Halted
                } else {
                    SliceEnd::Ran
                };
                return Ok(Slice { end, instructions });
            }
            (None, Err(uc_error::INSN_INVALID)) => FaultKind::InvalidOpcode,
            (None, Err(uc_error::EXCEPTION))
                if self.shared.borrow().delivery[v] == Delivery::Idt =>
            {
                // Our patch: a triple fault ends emu_start with EXCEPTION.
                match uc.reg_read(regs::pseudo::TRIPLE).map_err(backend)? {
                    u64::MAX => FaultKind::Other("unicorn: EXCEPTION".into()),
                    vector => FaultKind::TripleFault {
                        vector: u32::try_from(vector).unwrap_or(u32::MAX),
                    },
                }
            }
            (
                None,
                Err(
                    e @ (uc_error::READ_UNMAPPED
                    | uc_error::WRITE_UNMAPPED
                    | uc_error::FETCH_UNMAPPED),
                ),
            ) => FaultKind::Other(format!("unmapped access ({e:?})")),
            (None, Err(e)) => FaultKind::Other(format!("{e:?}")),
        };
        Err(self.guest_fault(v, kind))
    }

    fn guest_fault(&self, v: usize, kind: FaultKind) -> EngineError {
        let uc = &self.vcpus[v];
        let rip = uc.reg_read(RegisterX86::RIP).unwrap_or(0);
        let len = self.ram.len().saturating_sub(rip).min(64) as usize;
        let mut bytes = vec![0u8; len];
        let disassembly = match uc.mem_read(rip, &mut bytes) {
            Ok(()) => fault::listing(&bytes, rip),
            Err(_) => "   (rip is outside guest memory)\n".to_string(),
        };
        EngineError::GuestFault {
            vcpu: VcpuId(v as u16),
            rip,
            kind,
            disassembly,
        }
    }
}

/// One vCPU's unicorn instance: the qemu64 CPU model (no rdrand, so it
/// traps), guest RAM mapped write-protected, hooks, boot registers; and
/// its write-protection hook.
fn new_instance(
    ram: &ram::GuestRam,
    vcpu: VcpuId,
    shared: &Shared,
    halts: &Halts,
    state: &VcpuState,
) -> Result<(Vcpu, UcHookId), uc_error> {
    let mut uc = Unicorn::new(Arch::X86, Mode::MODE_64)?;
    uc.ctl_set_cpu_model(X86CpuModel::QEMU64 as i32)?;
    // SAFETY: `ram` is a live allocation of `ram.len()` bytes, page-aligned,
    // that outlives this instance (EmuEngine drops its instances before its
    // RAM) and that Rust code only touches through unicorn afterwards.
    unsafe { uc.mem_map_ptr(0, ram.len(), Prot::ALL, ram.as_mut_ptr().cast())? };
    uc.mem_protect(0, ram.len(), Prot::READ | Prot::EXEC)?;
    let write_protect = hooks::install(&mut uc, vcpu, shared, &halts.hooked, &halts.pauses)?;
    regs::write(&mut uc, state)?;
    Ok((uc, write_protect))
}

impl Engine for EmuEngine {
    fn run(&mut self, bus: &mut DeviceBus, budget: Instructions) -> Result<RunExit, EngineError> {
        std::mem::swap(bus, &mut self.shared.borrow_mut().bus);
        let result = self.run_inner(budget);
        std::mem::swap(bus, &mut self.shared.borrow_mut().bus);
        result
    }

    fn now(&self) -> GuestNs {
        GuestNs(self.now)
    }

    fn read_memory(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), EngineError> {
        self.check_range(gpa, buf.len())?;
        self.ram.read(gpa.0, buf);
        Ok(())
    }

    fn write_memory(&mut self, gpa: Gpa, bytes: &[u8]) -> Result<(), EngineError> {
        self.check_range(gpa, bytes.len())?;
        if bytes.is_empty() {
            return Ok(());
        }
        // Straight into RAM: unicorn's mem_write on a write-protected page
        // re-protects the region, which costs a memory-map rebuild per
        // call. Stale translations are dropped before the next run.
        self.ram.write(gpa.0, bytes);
        let mut state = self.shared.borrow_mut();
        let first = gpa.0 / PAGE_SIZE;
        let last = (gpa.0 + bytes.len() as u64 - 1) / PAGE_SIZE;
        for page in first..=last {
            hooks::mark_dirty(&mut state, page as u32);
        }
        self.code_stale = true;
        Ok(())
    }

    fn take_dirty_pages(&mut self) -> Result<Vec<PageIndex>, EngineError> {
        if self.dirty_tracking == DirtyTracking::Log {
            return self.take_logged_pages();
        }
        if self.dirty_tracking == DirtyTracking::EveryPage {
            let mut state = self.shared.borrow_mut();
            for page in std::mem::take(&mut state.dirty_list) {
                state.dirty[page as usize] = false;
            }
            return Ok((0..self.shape.pages()).map(PageIndex).collect());
        }
        let mut pages = std::mem::take(&mut self.shared.borrow_mut().dirty_list);
        pages.sort_unstable();
        let mut state = self.shared.borrow_mut();
        for &page in &pages {
            state.dirty[page as usize] = false;
            state.hooked_writes[page as usize] = 0;
        }
        drop(state);
        // Each protection change makes unicorn rebuild its memory map, so
        // only the pages an instance made writable are protected again.
        for (uc, writable) in self.vcpus.iter_mut().zip(&mut self.writable) {
            for page in std::mem::take(writable) {
                let gpa = u64::from(page) * PAGE_SIZE;
                uc.mem_protect(gpa, PAGE_SIZE, Prot::READ | Prot::EXEC)
                    .map_err(backend)?;
            }
            uc.ctl_flush_tlb().map_err(backend)?;
        }
        Ok(pages.into_iter().map(PageIndex).collect())
    }

    fn vcpu_state(&self, vcpu: VcpuId) -> Result<VcpuState, EngineError> {
        let v = usize::from(vcpu.0);
        let uc = self.vcpus.get(v).ok_or(EngineError::NoSuchVcpu(vcpu.0))?;
        regs::read(uc, self.run_states[v], &self.boot_states[v]).map_err(backend)
    }

    fn set_vcpu_state(&mut self, vcpu: VcpuId, state: &VcpuState) -> Result<(), EngineError> {
        let v = usize::from(vcpu.0);
        let uc = self
            .vcpus
            .get_mut(v)
            .ok_or(EngineError::NoSuchVcpu(vcpu.0))?;
        regs::write(uc, state).map_err(backend)?;
        self.run_states[v] = state.run_state;
        self.shared.borrow_mut().delivery[v] = match state.system {
            Some(_) => Delivery::Idt,
            None => Delivery::Hooks,
        };
        Ok(())
    }

    fn save_engine_state(&self) -> Vec<u8> {
        let state = self.shared.borrow();
        let mut w = Writer::new();
        w.u64(self.now);
        w.u64(self.budget_end);
        self.sched.save(&mut w);
        w.u64(state.quantum_start.0);
        w.u64(state.last_tsc);
        w.u64(state.rng.state());
        w.into_bytes()
    }

    fn restore_engine_state(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let bad = |e: machine::codec::DecodeError| EngineError::BadState(e.to_string());
        let mut r = Reader::new(bytes);
        let now = r.u64().map_err(bad)?;
        let budget_end = r.u64().map_err(bad)?;
        let mut sched = self.sched.clone();
        sched.restore(&mut r, self.shape.vcpus()).map_err(bad)?;
        let quantum_start = r.u64().map_err(bad)?;
        let last_tsc = r.u64().map_err(bad)?;
        let rng = r.u64().map_err(bad)?;
        r.finish().map_err(bad)?;
        self.now = now;
        self.budget_end = budget_end;
        self.sched = sched;
        let mut state = self.shared.borrow_mut();
        state.quantum_start = GuestNs(quantum_start);
        state.last_tsc = last_tsc;
        state.rng = SplitMix64::new(rng);
        self.code_stale = true;
        Ok(())
    }

    fn adopt_foreign_state(&mut self, now: GuestNs) -> Result<(), EngineError> {
        self.now = now.0;
        self.budget_end = now.0;
        self.sched.remaining = 0;
        self.shared.borrow_mut().quantum_start = now;
        self.code_stale = true;
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            instructions: Instructions(self.instructions),
            vcpu_switches: self.vcpu_switches,
            dirty_faults: self.shared.borrow().dirty_faults,
        }
    }

    fn back_memory(&mut self) {
        self.ram.back_in_background();
    }
}

/// A machine running `image` on the emulated engine, its disk on `store`.
pub fn emulated_machine(
    shape: Shape,
    image: &GuestImage,
    config: EmuConfig,
    store: Box<dyn machine::devices::BlockStore>,
) -> Result<machine::Machine<EmuEngine>, EngineError> {
    let engine = EmuEngine::new(shape, image, config)?;
    let bus = DeviceBus::new(shape.vcpus(), store);
    Ok(machine::Machine::new(shape, engine, bus))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    fn image(emit: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>) -> GuestImage {
        let mut a = CodeAssembler::new(64).expect("64-bit");
        emit(&mut a).expect("assembles");
        GuestImage {
            code: a.assemble(GUEST_CODE.0).expect("assembles"),
            params: [0; 8],
        }
    }

    #[test]
    fn hlt_is_hooked_only_where_rip_is_ambiguous() {
        let plain = Halts::of(&image(|a| {
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.hlt()?;
            a.jmp(top)
        }));
        assert_eq!(plain.all.len(), 1);
        assert!(plain.hooked.is_empty());
        assert!(plain.ended_in_hlt(GUEST_CODE.0 + 1, None));
        assert!(!plain.ended_in_hlt(GUEST_CODE.0, None));

        let target = Halts::of(&image(|a| {
            let mut after = a.create_label();
            a.jmp(after)?;
            a.hlt()?;
            a.set_label(&mut after)?;
            a.nop()
        }));
        assert_eq!(target.hooked.len(), 1);
        let at = target.hooked[0];
        assert!(!target.ended_in_hlt(at + 1, None));
        assert!(target.ended_in_hlt(at + 1, Some(at)));

        let indirect = Halts::of(&image(|a| {
            a.hlt()?;
            a.ret()
        }));
        assert_eq!(indirect.hooked.len(), 1);
    }

    /// A guest that stores to one data page, then reports done.
    fn one_store() -> GuestImage {
        image(|a| {
            a.mov(rax, machine::layout::GUEST_DATA.0)?;
            a.mov(qword_ptr(rax), 7)?;
            a.hlt()
        })
    }

    fn config() -> EmuConfig {
        EmuConfig {
            seed: 1,
            quantum: Quantum::default(),
        }
    }

    #[test]
    fn every_page_tracking_reports_all_memory_and_cannot_be_undone() {
        let shape = Shape::new(1, machine::layout::MEMORY_BYTES_MIN).expect("valid");
        let mut bus = DeviceBus::new(1, Box::new(machine::devices::MemStore::new(1)));
        let mut tracked = EmuEngine::new(shape, &one_store(), config()).expect("boots");
        tracked.take_dirty_pages().expect("takes");
        tracked.run(&mut bus, Instructions(100)).expect("runs");
        let page =
            PageIndex(u32::try_from(machine::layout::GUEST_DATA.0 / PAGE_SIZE).expect("low"));
        assert!(tracked.take_dirty_pages().expect("takes").contains(&page));

        let mut open = EmuEngine::new(shape, &one_store(), config()).expect("boots");
        open.set_dirty_tracking(DirtyTracking::EveryPage)
            .expect("switches");
        open.run(&mut bus, Instructions(100)).expect("runs");
        assert_eq!(
            open.take_dirty_pages().expect("takes").len(),
            shape.pages() as usize
        );
        let mut stored = [0u8; 8];
        open.read_memory(machine::layout::GUEST_DATA, &mut stored)
            .expect("reads");
        assert_eq!(u64::from_le_bytes(stored), 7, "the store went through");
        assert!(open
            .set_dirty_tracking(DirtyTracking::WriteProtect)
            .is_err());
        assert!(open.set_dirty_tracking(DirtyTracking::EveryPage).is_ok());
    }

    /// A blank machine (no image copied, memory all zero) restored from a
    /// full checkpoint is the machine it was taken from, and runs on as it
    /// does: what every Linux run of the simulator starts from.
    #[test]
    fn a_blank_machine_restored_from_a_checkpoint_runs_on_as_the_original() {
        let shape = Shape::new(2, machine::layout::MEMORY_BYTES_MIN).expect("valid");
        let image = machine::guests::Guest::Compute
            .image([1_000_000, 0, 0, 0, 0, 0, 0, 0])
            .expect("assembles");
        let store = || Box::new(machine::devices::MemStore::new(4));
        let mut original = emulated_machine(shape, &image, config(), store()).expect("boots");
        original.run(Instructions(50_000)).expect("runs");
        let checkpoint = original
            .checkpoint(machine::Kind::Full)
            .expect("checkpoint");
        let engine =
            EmuEngine::blank(shape, checkpoint.vcpu_states.clone(), config()).expect("builds");
        let mut restored =
            machine::Machine::new(shape, engine, DeviceBus::new(shape.vcpus(), store()));
        restored.restore(&checkpoint).expect("restores");
        assert_eq!(
            restored.state_hash().expect("hash"),
            original.state_hash().expect("hash")
        );
        original.run(Instructions(200_000)).expect("runs");
        restored.run(Instructions(200_000)).expect("runs");
        assert_eq!(
            restored.state_hash().expect("hash"),
            original.state_hash().expect("hash")
        );
        assert!(
            EmuEngine::blank(shape, Vec::new(), config()).is_err(),
            "a vCPU state per vCPU"
        );
    }
}
