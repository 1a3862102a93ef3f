//! Engine #2: the machine on KVM. Same memory image and boot state (the
//! vCPUs start in long mode with the registers of
//! [`machine::boot::initial_vcpu_state`]), same devices reached through
//! the machine's [`DeviceBus`] on `KVM_EXIT_IO`, one host thread per vCPU.
//!
//! Guest time on KVM: nanoseconds of host monotonic time that pass inside
//! [`Engine::run`], continuing from wherever the machine's time stood (a
//! checkpoint carries it). The clock stops while the guest is paused. When
//! every vCPU sleeps in `hlt`, the engine sleeps until the earliest clock
//! deadline of the bus; with no deadline before the budget's end nothing
//! can happen until new input, so the rest of the budget passes at once,
//! as on the emulated engine. The clock device reads this time at the
//! moment the run thread serves the port access. The budget of
//! [`Engine::run`] is therefore guest nanoseconds, the same unit the
//! emulated engine counts as one instruction each: `run(b)` returns once
//! guest time reached the sum of all budgets so far; the time the vCPUs
//! take to stop after that (tens of microseconds with a host core per
//! vCPU, up to a scheduler tick when vCPU threads wait for a core) counts
//! against the next run. Single-vCPU guests that do not read the clock
//! therefore end in the same state on both engines, whatever the budgets.
//!
//! Not counted on KVM: retired instructions and vCPU switches
//! ([`machine::EngineStats`] reports zeros); port exits, halts and kicks
//! are in [`KvmStats`].

mod run;
mod state;
mod sys;
mod vcpu;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VmFd};
use machine::codec::{DecodeError, Reader, Writer};
use machine::devices::BlockStore;
use machine::guests::GuestImage;
use machine::{
    DeviceBus, Engine, EngineError, EngineStats, Gpa, GuestNs, Instructions, Machine, PageIndex,
    RunExit, RunState, RunWaker, Shape, VcpuId, VcpuState, PAGE_SIZE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use run::InGuest;
use state::CpuExtras;
use vcpu::{Report, VcpuThread};

/// Where KVM may put the TSS it needs on Intel hosts: above guest memory,
/// below 4 GiB, as Firecracker does.
const TSS_ADDRESS: usize = 0xfffb_d000;
/// The first bytes of the KVM engine's private state.
const STATE_MAGIC: [u8; 8] = *b"LKSTKVM1";

/// Error setting up the KVM engine.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No usable `/dev/kvm`; the message says what to do.
    #[error("{0}")]
    Unavailable(String),
    /// A KVM call failed while building the machine.
    #[error("KVM setup: {what}: {source}")]
    Setup {
        /// The step that failed.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl From<KvmError> for EngineError {
    fn from(error: KvmError) -> EngineError {
        EngineError::Backend(error.to_string())
    }
}

fn setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |e| KvmError::Setup {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// Opens `/dev/kvm`, or says in one line why not and what to do.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    open_kvm_at("/dev/kvm")
}

fn open_kvm_at(path: &str) -> Result<Kvm, KvmError> {
    Kvm::new_with_path(std::ffi::CString::new(path).expect("no NUL in the path")).map_err(|e| {
        KvmError::Unavailable(match e.errno() {
            libc::ENOENT => "no /dev/kvm: KVM is not available on this host; enable \
                             virtualization and load the module (modprobe kvm_intel or \
                             modprobe kvm_amd), or use --engine emu"
                .to_string(),
            libc::EACCES | libc::EPERM => "/dev/kvm: permission denied; add your user to \
                                           group kvm (usermod -aG kvm $USER, then log in \
                                           again) or use --engine emu"
                .to_string(),
            _ => format!("/dev/kvm cannot be opened: {e}"),
        })
    })
}

/// Counters of the KVM engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvmStats {
    /// Port accesses forwarded to the device bus.
    pub io_exits: u64,
    /// `hlt` exits.
    pub halts: u64,
    /// Signals sent to stop vCPUs.
    pub kicks: u64,
    /// Host nanoseconds the last run took to stop its vCPUs, from the
    /// first kick until every vCPU was out of the guest (0 if none was in).
    pub stop_ns_last: u64,
}

/// The KVM engine.
pub struct KvmEngine {
    // Field order is drop order: the vCPU threads end before the VM goes,
    // and the VM before the memory it maps.
    vcpus: Vec<VcpuThread>,
    reports: Receiver<Report>,
    /// The waker's way into `reports`.
    wake_tx: Sender<Report>,
    /// A wake is in `reports` and not yet taken: later wakes add none.
    wake_pending: Arc<AtomicBool>,
    /// Which vCPUs are inside the guest (between runs too, when kept
    /// running).
    in_guest: InGuest,
    /// The vCPUs go on running between runs (see [`Engine::keep_running`]).
    keep_running: bool,
    vm: VmFd,
    memory: GuestMemoryMmap,
    shape: Shape,
    run_states: Vec<RunState>,
    now_ns: u64,
    budget_end_ns: u64,
    host_dirty: BTreeSet<u32>,
    msr_indices: Vec<u32>,
    boot_extras: Vec<CpuExtras>,
    pending_extras: Vec<Option<CpuExtras>>,
    stats: KvmStats,
}

impl std::fmt::Debug for KvmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmEngine")
            .field("shape", &self.shape)
            .field("now_ns", &self.now_ns)
            .field("run_states", &self.run_states)
            .finish_non_exhaustive()
    }
}

impl KvmEngine {
    /// Boots `image` on a machine of `shape` under KVM.
    pub fn new(shape: Shape, image: &GuestImage) -> Result<KvmEngine, KvmError> {
        let kvm = open_kvm()?;
        let vm = kvm.create_vm().map_err(setup("KVM_CREATE_VM"))?;
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(setup("KVM_SET_TSS_ADDR"))?;
        let memory = boot_memory(&vm, shape, image)?;
        sys::install_kick_handler().map_err(|source| KvmError::Setup {
            what: "kick signal handler",
            source,
        })?;
        let (report_tx, reports) = std::sync::mpsc::channel();
        let booted = boot_vcpus(&kvm, &vm, shape, &report_tx)?;
        let n = usize::from(shape.vcpus());
        let mut engine = KvmEngine {
            vcpus: booted.threads,
            reports,
            wake_tx: report_tx,
            wake_pending: Arc::new(AtomicBool::new(false)),
            in_guest: InGuest::none(n),
            keep_running: false,
            vm,
            memory,
            shape,
            run_states: vec![RunState::Running; n],
            now_ns: 0,
            budget_end_ns: 0,
            host_dirty: BTreeSet::new(),
            msr_indices: booted.msr_indices,
            boot_extras: booted.extras,
            pending_extras: vec![None; n],
            stats: KvmStats::default(),
        };
        engine
            .take_dirty_pages()
            .map_err(|e| other("dirty log", e))?;
        Ok(engine)
    }

    /// The engine's counters.
    pub fn kvm_stats(&self) -> KvmStats {
        self.stats
    }

    fn check_range(&self, gpa: Gpa, len: usize) -> Result<(), EngineError> {
        if gpa
            .0
            .checked_add(len as u64)
            .is_none_or(|end| end > self.shape.memory_bytes())
        {
            return Err(EngineError::OutOfRange { gpa, len });
        }
        Ok(())
    }

    fn vcpu(&self, vcpu: VcpuId) -> Result<&VcpuThread, EngineError> {
        if self.in_guest.any() {
            // Its thread holds the vCPU while it runs: waiting for it
            // would wait for ever.
            return Err(EngineError::Backend(
                "kvm: the vCPUs are running; settle the machine first".into(),
            ));
        }
        self.vcpus
            .get(usize::from(vcpu.0))
            .ok_or(EngineError::NoSuchVcpu(vcpu.0))
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<(u64, u64, Vec<CpuExtras>), DecodeError> {
        let mut r = Reader::new(bytes);
        if r.raw(STATE_MAGIC.len())? != STATE_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let now = r.u64()?;
        let budget_end = r.u64()?;
        let vcpus = r.u16()?;
        if vcpus != self.shape.vcpus() {
            return Err(DecodeError::Invalid(format!("state for {vcpus} vCPUs")));
        }
        let mut extras = Vec::new();
        for _ in 0..vcpus {
            extras.push(CpuExtras::decode(&mut r)?);
        }
        r.finish()?;
        Ok((now, budget_end, extras))
    }
}

fn other(what: &'static str, error: impl std::fmt::Display) -> KvmError {
    KvmError::Setup {
        what,
        source: std::io::Error::other(error.to_string()),
    }
}

/// Guest memory holding the boot image, registered as KVM slot 0 with
/// dirty logging.
fn boot_memory(vm: &VmFd, shape: Shape, image: &GuestImage) -> Result<GuestMemoryMmap, KvmError> {
    let bytes = usize::try_from(shape.memory_bytes()).expect("at most 1 GiB");
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bytes)])
        .map_err(|e| other("guest memory", e))?;
    memory
        .write_slice(&image.boot_memory(&shape), GuestAddress(0))
        .expect("boot image is the size of memory");
    sys::register_memory(vm, &memory, shape.memory_bytes())
        .map_err(setup("KVM_SET_USER_MEMORY_REGION"))?;
    Ok(memory)
}

/// The vCPUs at boot: their threads, the MSRs KVM has, and each vCPU's
/// boot extras (what a checkpoint from another engine restores).
struct BootedVcpus {
    threads: Vec<VcpuThread>,
    msr_indices: Vec<u32>,
    extras: Vec<CpuExtras>,
}

fn boot_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    shape: Shape,
    reports: &std::sync::mpsc::Sender<Report>,
) -> Result<BootedVcpus, KvmError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(setup("KVM_GET_SUPPORTED_CPUID"))?;
    let mut booted = BootedVcpus {
        threads: Vec::new(),
        msr_indices: Vec::new(),
        extras: Vec::new(),
    };
    for v in 0..shape.vcpus() {
        let fd = vm
            .create_vcpu(u64::from(v))
            .map_err(setup("KVM_CREATE_VCPU"))?;
        fd.set_cpuid2(&cpuid).map_err(setup("KVM_SET_CPUID2"))?;
        if v == 0 {
            booted.msr_indices = state::supported_msrs(&fd, &state::MSRS_CARRIED);
        }
        let boot = machine::boot::initial_vcpu_state(&shape, v);
        state::write(&fd, &boot, None).map_err(|e| other("boot registers", e))?;
        let extras =
            CpuExtras::read(&fd, &booted.msr_indices).map_err(|e| other("boot state", e))?;
        booted.extras.push(extras);
        let thread = VcpuThread::spawn(VcpuId(v), fd, reports.clone()).map_err(|source| {
            KvmError::Setup {
                what: "vCPU thread",
                source,
            }
        })?;
        booted.threads.push(thread);
    }
    Ok(booted)
}

fn backend(error: impl std::fmt::Display) -> EngineError {
    EngineError::Backend(format!("kvm: {error}"))
}

impl Engine for KvmEngine {
    fn run(&mut self, bus: &mut DeviceBus, budget: Instructions) -> Result<RunExit, EngineError> {
        self.run_for(bus, budget.0)
    }

    fn now(&self) -> GuestNs {
        GuestNs(self.now_ns)
    }

    fn read_memory(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), EngineError> {
        self.check_range(gpa, buf.len())?;
        self.memory
            .read_slice(buf, GuestAddress(gpa.0))
            .map_err(backend)
    }

    fn write_memory(&mut self, gpa: Gpa, bytes: &[u8]) -> Result<(), EngineError> {
        self.check_range(gpa, bytes.len())?;
        if bytes.is_empty() {
            return Ok(());
        }
        self.memory
            .write_slice(bytes, GuestAddress(gpa.0))
            .map_err(backend)?;
        let first = gpa.0 / PAGE_SIZE;
        let last = (gpa.0 + bytes.len() as u64 - 1) / PAGE_SIZE;
        for page in first..=last {
            self.host_dirty
                .insert(u32::try_from(page).expect("memory is at most 1 GiB"));
        }
        Ok(())
    }

    fn take_dirty_pages(&mut self) -> Result<Vec<PageIndex>, EngineError> {
        let bytes = usize::try_from(self.shape.memory_bytes()).expect("at most 1 GiB");
        let bitmap = self.vm.get_dirty_log(0, bytes).map_err(backend)?;
        let mut pages: Vec<u32> = std::mem::take(&mut self.host_dirty).into_iter().collect();
        for (i, word) in bitmap.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let page = i as u32 * 64 + bits.trailing_zeros();
                if page < self.shape.pages() {
                    pages.push(page);
                }
                bits &= bits - 1;
            }
        }
        pages.sort_unstable();
        pages.dedup();
        Ok(pages.into_iter().map(PageIndex).collect())
    }

    fn vcpu_state(&self, vcpu: VcpuId) -> Result<VcpuState, EngineError> {
        let fd = vcpu::lock(&self.vcpu(vcpu)?.fd);
        let regs = fd.get_regs().map_err(backend)?;
        let sregs = fd.get_sregs().map_err(backend)?;
        Ok(state::to_vcpu_state(
            &regs,
            &sregs,
            self.run_states[usize::from(vcpu.0)],
        ))
    }

    fn set_vcpu_state(&mut self, vcpu: VcpuId, state: &VcpuState) -> Result<(), EngineError> {
        let v = usize::from(vcpu.0);
        let extras = self.pending_extras.get_mut(v).and_then(Option::take);
        let fd = vcpu::lock(&self.vcpu(vcpu)?.fd);
        state::write(&fd, state, extras.as_ref()).map_err(backend)?;
        drop(fd);
        self.run_states[v] = state.run_state;
        Ok(())
    }

    fn save_engine_state(&self) -> Vec<u8> {
        assert!(
            !self.in_guest.any(),
            "the machine settles before it saves the engine's state"
        );
        let mut w = Writer::new();
        w.raw(&STATE_MAGIC);
        w.u64(self.now_ns);
        w.u64(self.budget_end_ns);
        w.u16(self.shape.vcpus());
        for thread in &self.vcpus {
            let fd = vcpu::lock(&thread.fd);
            CpuExtras::read(&fd, &self.msr_indices)
                .expect("a stopped vCPU's state reads")
                .encode(&mut w);
        }
        w.into_bytes()
    }

    fn restore_engine_state(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        let (now, budget_end, extras) = self
            .decode_state(bytes)
            .map_err(|e| EngineError::BadState(e.to_string()))?;
        self.now_ns = now;
        self.budget_end_ns = budget_end;
        self.pending_extras = extras.into_iter().map(Some).collect();
        Ok(())
    }

    fn adopt_foreign_state(&mut self, now: GuestNs) -> Result<(), EngineError> {
        self.now_ns = now.0;
        self.budget_end_ns = now.0;
        self.pending_extras = self.boot_extras.iter().cloned().map(Some).collect();
        Ok(())
    }

    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }

    fn keep_running(&mut self, keep: bool) {
        self.keep_running = keep;
    }

    fn settle(&mut self, bus: &mut DeviceBus) -> Result<(), EngineError> {
        self.settle_vcpus(bus)
    }

    fn waker(&self) -> Option<RunWaker> {
        let (tx, pending) = (self.wake_tx.clone(), Arc::clone(&self.wake_pending));
        Some(RunWaker::new(move || {
            if !pending.swap(true, Ordering::AcqRel) {
                let _ = tx.send(Report::Wake);
            }
        }))
    }
}

/// A machine running `image` on KVM, its disk on `store`.
pub fn kvm_machine(
    shape: Shape,
    image: &GuestImage,
    store: Box<dyn BlockStore>,
) -> Result<Machine<KvmEngine>, KvmError> {
    let engine = KvmEngine::new(shape, image)?;
    let bus = DeviceBus::new(shape.vcpus(), store);
    Ok(Machine::new(shape, engine, bus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kvm_says_what_to_do_in_one_line() {
        let error = open_kvm_at("/nonexistent/kvm").expect_err("no such device");
        let message = error.to_string();
        assert!(message.contains("no /dev/kvm"), "{message}");
        assert!(message.contains("modprobe kvm_amd"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}
