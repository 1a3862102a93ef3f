//! The unicorn hooks of one vCPU: port I/O into the device bus, first
//! writes to write-protected pages (dirty tracking), `hlt`, `rdtsc`,
//! `rdrand`/`rdseed` emulation, and faults. They share [`HookState`].

use std::cell::RefCell;
use std::ffi::c_void;
use std::rc::Rc;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use machine::devices::{DeviceBus, IoContext, MemStore, PORT_DISK_CMD};
use machine::rng::SplitMix64;
use machine::{FaultKind, GuestNs, VcpuId, PAGE_SIZE};
use unicorn_engine::unicorn_const::{uc_engine, uc_error, HookType, X86Insn};
use unicorn_engine::{RegisterX86, UcHookId, Unicorn};

/// State the hooks of every vCPU share with the engine.
#[derive(Debug)]
pub(crate) struct HookState {
    /// The machine's devices, lent to the engine for the length of a run.
    pub bus: DeviceBus,
    /// Guest time at the start of the current quantum: what the clock
    /// port reads during it, so it does not depend on how a run is split.
    pub quantum_start: GuestNs,
    /// The last value rdtsc returned (rdtsc is strictly increasing).
    pub last_tsc: u64,
    /// Feeds rdrand and rdseed.
    pub rng: SplitMix64,
    /// Per page: written since the last checkpoint.
    pub dirty: Vec<bool>,
    /// The pages set in `dirty`, in order of first write.
    pub dirty_list: Vec<u32>,
    /// Write-protection faults taken.
    pub dirty_faults: u64,
    /// Per page: stores taken through the hook since the last checkpoint.
    pub hooked_writes: Vec<u16>,
    /// Pages the running vCPU wrote while they were protected in its
    /// instance; the engine unprotects them there after the slice.
    pub unprotect: Vec<u32>,
    /// Guest RAM, for stores the write-protection hook performs.
    pub ram: *mut u8,
    /// Its length.
    pub ram_len: u64,
    /// Set by the hook on a `hlt`: the address of the `hlt` executed.
    pub halting: Option<u64>,
    /// The first fault of the current run.
    pub fault: Option<(VcpuId, FaultKind)>,
    /// Set by the hook when a disk command took store time: the vCPU
    /// waits that long (its slice stops at the command).
    pub disk_wait_ns: u64,
    /// Set by the hook on a `pause`: the vCPU yields its quantum.
    pub yielded: bool,
    /// Set by the local APIC's hook when the vCPU wrote its ICR (sent an
    /// IPI): the engine then shares what it wrote with the other vCPUs'
    /// translations (`EmuEngine::share_stores`).
    pub ipi_sent: bool,
    /// Where the slice began: a `pause` there is the one the vCPU yielded
    /// at last time (a code hook runs before its instruction), so it runs.
    pub slice_start: Option<u64>,
    /// Per vCPU: how its exceptions are taken.
    pub delivery: Vec<Delivery>,
    /// Per vCPU: the PC platform's vector raised in its instance at the
    /// slice start and not yet seen taken (`platform`).
    pub offered: Vec<Option<u8>>,
    /// The vCPU whose slice runs (for hooks that are not per instance).
    pub running: Option<VcpuId>,
}

/// How a vCPU's exceptions are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// By unicorn's hooks, as errors of the run: the assembled guests,
    /// which have no IDT.
    Hooks,
    /// Through the guest's IDT, by QEMU's own delivery (our unicorn
    /// patch); an unclaimed #UD is vector 6 then, not an error.
    Idt,
}

/// rdrand's generator for an engine seeded with `seed`.
fn rdrand_rng(seed: u64) -> SplitMix64 {
    SplitMix64::new(seed ^ 0x7264_7261_6e64)
}

impl HookState {
    /// rdrand draws from `seed` from now on.
    pub(crate) fn reseed(&mut self, seed: u64) {
        self.rng = rdrand_rng(seed);
    }

    pub(crate) fn new(vcpus: u16, pages: u32, seed: u64, ram: *mut u8) -> HookState {
        HookState {
            bus: placeholder_bus(vcpus),
            quantum_start: GuestNs(0),
            last_tsc: 0,
            rng: rdrand_rng(seed),
            dirty: vec![false; pages as usize],
            dirty_list: Vec::new(),
            dirty_faults: 0,
            hooked_writes: vec![0; pages as usize],
            unprotect: Vec::new(),
            ram,
            ram_len: u64::from(pages) * PAGE_SIZE,
            halting: None,
            fault: None,
            disk_wait_ns: 0,
            yielded: false,
            ipi_sent: false,
            slice_start: None,
            delivery: vec![Delivery::Hooks; usize::from(vcpus)],
            offered: vec![None; usize::from(vcpus)],
            running: None,
        }
    }
}

/// Stands in for the machine's bus while the engine is not running.
pub(crate) fn placeholder_bus(vcpus: u16) -> DeviceBus {
    DeviceBus::new(vcpus, Box::new(MemStore::new(0)))
}

pub(crate) type Shared = Rc<RefCell<HookState>>;

/// Notes `page` written since the last checkpoint (once in the list).
pub(crate) fn mark_dirty(state: &mut HookState, page: u32) {
    if !std::mem::replace(&mut state.dirty[page as usize], true) {
        state.dirty_list.push(page);
    }
}
pub(crate) type Vcpu = Unicorn<'static, ()>;

fn ctx(state: &HookState, vcpu: VcpuId) -> IoContext {
    IoContext {
        vcpu,
        now: state.quantum_start,
    }
}

/// Installs every hook on the instance of `vcpu`; `hlt_addresses` are the
/// `hlt` instructions of the guest image to watch, `pause_addresses` its
/// `pause` instructions. Returns the write-protection hook, which a dirty
/// tracking without protected pages removes.
///
/// A memory hook over a page keeps every store to it on unicorn's slow
/// path (its notdirty_write never clears the TLB entry's TLB_NOTDIRTY
/// when a hook covers the address), so the hooks that need not cover RAM
/// do not: guest RAM is all mapped, so an unmapped address lies above it.
pub(crate) fn install(
    uc: &mut Vcpu,
    vcpu: VcpuId,
    shared: &Shared,
    hlt_addresses: &[u64],
    pause_addresses: &[u64],
) -> Result<UcHookId, uc_error> {
    let s = shared.clone();
    uc.add_insn_in_hook(move |_, port, size| {
        let mut state = s.borrow_mut();
        let context = ctx(&state, vcpu);
        state.bus.port_in(context, port as u16, size as u8)
    })?;
    let s = shared.clone();
    uc.add_insn_out_hook(move |uc, port, size, value| {
        let mut state = s.borrow_mut();
        let context = ctx(&state, vcpu);
        state.bus.port_out(context, port as u16, size as u8, value);
        if port as u16 == PORT_DISK_CMD {
            let wait = state.bus.disk.take_busy_ns(usize::from(vcpu.0));
            if wait > 0 {
                state.disk_wait_ns += wait;
                // Stopping from a hook is the documented way out; it
                // cannot fail on a running instance.
                let _ = uc.emu_stop();
            }
        }
    })?;
    let s = shared.clone();
    let write_protect = uc.add_mem_hook(
        HookType::MEM_WRITE_PROT,
        1,
        0,
        move |_, _, address, size, value| protected_write(&s, address, size, value),
    )?;
    for &address in hlt_addresses {
        let s = shared.clone();
        uc.add_code_hook(address, address, move |_, address, _| {
            s.borrow_mut().halting = Some(address);
        })?;
    }
    for &address in pause_addresses {
        let s = shared.clone();
        uc.add_code_hook(address, address, move |uc, at, _| {
            let mut state = s.borrow_mut();
            if state.slice_start.take() == Some(at) {
                return;
            }
            state.yielded = true;
            let _ = uc.emu_stop();
        })?;
    }
    let s = shared.clone();
    uc.add_insn_invalid_hook(move |uc| invalid_instruction(uc, &s, vcpu))?;
    let s = shared.clone();
    uc.add_intr_hook(move |uc, vector| {
        let cr2 = uc.reg_read(RegisterX86::CR2).unwrap_or(0);
        let kind = match vector {
            6 => FaultKind::InvalidOpcode,
            14 => FaultKind::MemoryOutOfRange { address: cr2 },
            _ => FaultKind::TripleFault { vector },
        };
        s.borrow_mut().fault.get_or_insert((vcpu, kind));
        let _ = uc.emu_stop();
    })?;
    let s = shared.clone();
    let ram_end = shared.borrow().ram_len;
    uc.add_mem_hook(
        HookType::MEM_UNMAPPED,
        ram_end,
        u64::MAX,
        move |_, _, address, _, _| {
            let kind = FaultKind::MemoryOutOfRange { address };
            s.borrow_mut().fault.get_or_insert((vcpu, kind));
            false
        },
    )?;
    add_rdtsc_hook(uc, shared)?;
    Ok(write_protect)
}

/// Stores a page takes through the hook in one epoch before it is made
/// writable: every protection change makes unicorn rebuild its memory map
/// (cost growing with the number of regions, and each page made writable
/// splits off a region), so pages written a few times per epoch stay
/// protected and only hot ones are opened.
pub(crate) const HOT_PAGE_WRITES: u16 = 4;

/// A write to a page that is write-protected in this instance: mark it
/// dirty and, once the page is hot, queue it to be made writable here when
/// the current slice ends. It cannot be unprotected now: unicorn's store
/// helper goes on with the TLB entry it read before calling the hook, so
/// changing protection or flushing the TLB from inside the hook corrupts
/// the store. With the page still read-only, unicorn drops the store after
/// a handled hook, so the hook performs it itself.
fn protected_write(shared: &Shared, address: u64, size: usize, value: i64) -> bool {
    let mut state = shared.borrow_mut();
    let size = size.min(8);
    let end = address + size as u64;
    if end > state.ram_len {
        return false;
    }
    state.dirty_faults += 1;
    for page in address / PAGE_SIZE..=(end - 1) / PAGE_SIZE {
        let page = page as u32;
        mark_dirty(&mut state, page);
        let writes = &mut state.hooked_writes[page as usize];
        *writes = writes.saturating_add(1);
        if *writes >= HOT_PAGE_WRITES && !state.unprotect.contains(&page) {
            state.unprotect.push(page);
        }
    }
    let bytes = value.to_le_bytes();
    // SAFETY: `ram` is the live guest RAM of `ram_len` bytes (the engine
    // owns it and drops it after every instance), the range was checked
    // above, and no Rust reference into the RAM exists: it is only reached
    // through unicorn and this pointer, on this thread, while the
    // emulator is inside this hook.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), state.ram.add(address as usize), size);
    }
    true
}

/// `rdrand`/`rdseed` are invalid on the emulated CPU model (it lacks
/// them), so they arrive here and get the engine's seeded numbers; any
/// other invalid instruction is a fault.
fn invalid_instruction(uc: &mut Unicorn<'_, ()>, shared: &Shared, vcpu: VcpuId) -> bool {
    let Ok(rip) = uc.reg_read(RegisterX86::RIP) else {
        return false;
    };
    let mut bytes = [0u8; 15];
    if uc.mem_read(rip, &mut bytes).is_err() {
        return false;
    }
    let instruction = Decoder::with_ip(64, &bytes, rip, DecoderOptions::NONE).decode();
    let random = matches!(instruction.mnemonic(), Mnemonic::Rdrand | Mnemonic::Rdseed)
        && instruction.op0_kind() == OpKind::Register;
    if !random {
        let mut state = shared.borrow_mut();
        if state.delivery[usize::from(vcpu.0)] == Delivery::Hooks {
            state.fault.get_or_insert((vcpu, FaultKind::InvalidOpcode));
        }
        return false;
    }
    let register = instruction.op0_register();
    let value = shared.borrow_mut().rng.next_u64();
    let value = match register.size() {
        2 => value & 0xffff,
        4 => value & 0xffff_ffff,
        _ => value,
    };
    let Some(target) = register_x86(register.full_register()) else {
        return false;
    };
    // rdrand writes the full 64-bit register for 32-bit and 16-bit forms
    // as mov does: 32-bit zero-extends; 16-bit keeps the upper bits.
    let old = uc.reg_read(target).unwrap_or(0);
    let merged = if register.size() == 2 {
        (old & !0xffff) | value
    } else {
        value
    };
    let flags = uc.reg_read(RegisterX86::RFLAGS).unwrap_or(0x2);
    let flags = (flags & !0x8d5) | 1; // CF=1; OF, SF, ZF, AF, PF cleared
    uc.reg_write(target, merged).is_ok()
        && uc.reg_write(RegisterX86::RFLAGS, flags).is_ok()
        && uc
            .reg_write(RegisterX86::RIP, rip + instruction.len() as u64)
            .is_ok()
}

fn register_x86(register: Register) -> Option<RegisterX86> {
    Some(match register {
        Register::RAX => RegisterX86::RAX,
        Register::RCX => RegisterX86::RCX,
        Register::RDX => RegisterX86::RDX,
        Register::RBX => RegisterX86::RBX,
        Register::RSP => RegisterX86::RSP,
        Register::RBP => RegisterX86::RBP,
        Register::RSI => RegisterX86::RSI,
        Register::RDI => RegisterX86::RDI,
        Register::R8 => RegisterX86::R8,
        Register::R9 => RegisterX86::R9,
        Register::R10 => RegisterX86::R10,
        Register::R11 => RegisterX86::R11,
        Register::R12 => RegisterX86::R12,
        Register::R13 => RegisterX86::R13,
        Register::R14 => RegisterX86::R14,
        Register::R15 => RegisterX86::R15,
        _ => return None,
    })
}

/// rdtsc: the engine's clock, strictly increasing.
unsafe extern "C" fn rdtsc_hook(uc: *mut uc_engine, user_data: *mut c_void) -> i32 {
    // SAFETY: `user_data` is `Rc::as_ptr` of the engine's `Shared`, which
    // outlives every unicorn instance (the engine drops them first), and
    // hooks run on the engine's thread while no other borrow is active.
    let state = unsafe { &*(user_data as *const RefCell<HookState>) };
    let tsc = {
        let mut state = state.borrow_mut();
        let tsc = state.quantum_start.0.max(state.last_tsc + 1);
        state.last_tsc = tsc;
        tsc
    };
    let (low, high) = (tsc & 0xffff_ffff, tsc >> 32);
    // SAFETY: `uc` is the live engine calling this hook; the values are
    // 8-byte integers as uc_reg_write expects for 64-bit registers.
    unsafe {
        let _ = unicorn_engine::unicorn_const::uc_reg_write(
            uc,
            RegisterX86::RAX as i32,
            (&raw const low).cast(),
        );
        let _ = unicorn_engine::unicorn_const::uc_reg_write(
            uc,
            RegisterX86::RDX as i32,
            (&raw const high).cast(),
        );
    }
    1 // skip unicorn's own rdtsc
}

/// A raw instruction hook's callback: it returns whether it did the
/// instruction's work (1: unicorn skips its own).
pub(crate) type RawInsnHook = unsafe extern "C" fn(*mut uc_engine, *mut c_void) -> i32;

/// Adds `callback` as the hook of every `insn` the vCPU runs, with
/// `shared` as its user data. The safe binding's instruction hooks return
/// nothing, but rdtsc hooks (and the MSR hooks our patch adds) must
/// return whether they replaced the instruction, so these are raw.
///
/// # Safety
/// `callback` must read its user data as the `Shared` it is given here
/// (which the engine keeps alive for as long as the instance), and have
/// the signature unicorn calls `insn`'s hooks with (`uc_cb_insn_cpuid_t`).
pub(crate) unsafe fn add_raw_insn_hook(
    uc: &mut Vcpu,
    shared: &Shared,
    insn: X86Insn,
    callback: RawInsnHook,
) -> Result<(), uc_error> {
    let mut handle: unicorn_engine::unicorn_const::uc_hook = 0;
    // SAFETY: the caller vouches for the callback and its user data;
    // begin > end means every address.
    let error = unsafe {
        unicorn_engine::unicorn_const::uc_hook_add(
            uc.get_handle(),
            &raw mut handle,
            HookType::INSN.0 as i32,
            callback as *mut c_void,
            Rc::as_ptr(shared) as *mut c_void,
            1u64,
            0u64,
            insn as i32,
        )
    };
    match error {
        uc_error::OK => Ok(()),
        other => Err(other),
    }
}

fn add_rdtsc_hook(uc: &mut Vcpu, shared: &Shared) -> Result<(), uc_error> {
    // SAFETY: `rdtsc_hook` reads its user data as the `Shared` (see there)
    // and has the rdtsc hooks' signature.
    unsafe { add_raw_insn_hook(uc, shared, X86Insn::RDTSC, rdtsc_hook) }
}
