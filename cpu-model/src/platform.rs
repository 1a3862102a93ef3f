//! The PC platform ([`machine::pc`]) on the emulated engine: the APIC
//! pages as unicorn MMIO reaching the device bus, and the local APIC's
//! interrupts offered at slice boundaries through the patched delivery
//! (`regs::pseudo::IRQ`), acknowledged (IRR to ISR) once the vCPU took
//! them. Only at slice boundaries, so deterministic: the engine ends a
//! slice at the platform's next timer deadline.

use std::cell::RefCell;
use std::ffi::c_void;

use machine::devices::IoContext;
use machine::pc::ioapic::{IOAPIC_BASE, IOAPIC_WINDOW_BYTES};
use machine::pc::lapic::{self, APIC_BASE_DEFAULT, APIC_PAGE_BYTES};
use machine::pc::vectors::Vector;
use machine::pc::{CpuidRegs, MsrWrite, Pc};
use machine::virtio::{VirtioSlot, VIRTIO_MMIO_WINDOW_BYTES};
use machine::{Gpa, VcpuId};
use unicorn_engine::unicorn_const::{uc_engine, uc_error, uc_reg_read, uc_reg_write, X86Insn};
use unicorn_engine::{RegisterX86, Unicorn};

use crate::hooks::{HookState, Shared, Vcpu};
use crate::regs;

/// The widest access unicorn hands an MMIO callback.
const ACCESS_BYTES_MAX: usize = 8;

/// Maps the local APIC's page and the I/O APIC's window into the instance
/// of `vcpu` (above guest RAM, which ends at 1 GiB at most). Each access
/// first settles whether the vCPU took its offered vector, so the APIC
/// sees the acknowledge before the handler's EOI.
pub(crate) fn map_mmio(uc: &mut Vcpu, vcpu: VcpuId, shared: &Shared) -> Result<(), uc_error> {
    let mut windows = vec![
        (APIC_BASE_DEFAULT, APIC_PAGE_BYTES),
        (IOAPIC_BASE, IOAPIC_WINDOW_BYTES),
    ];
    if shared.borrow().bus.virtio().is_some() {
        windows.extend(VirtioSlot::ALL.map(|slot| (slot.base(), VIRTIO_MMIO_WINDOW_BYTES)));
    }
    for (base, bytes) in windows {
        let (r, w) = (shared.clone(), shared.clone());
        uc.mmio_map(
            base,
            bytes,
            Some(move |uc: &mut Unicorn<'_, ()>, offset: u64, size: usize| {
                let mut state = r.borrow_mut();
                settle_taken(uc, &mut state, vcpu);
                let ctx = io_context(&state, vcpu);
                let mut data = [0u8; ACCESS_BYTES_MAX];
                let len = size.min(ACCESS_BYTES_MAX);
                state
                    .bus
                    .mmio_read(ctx, Gpa(base + offset), &mut data[..len]);
                u64::from_le_bytes(data)
            }),
            Some(
                move |uc: &mut Unicorn<'_, ()>, offset: u64, size: usize, value: u64| {
                    let mut state = w.borrow_mut();
                    settle_taken(uc, &mut state, vcpu);
                    let ctx = io_context(&state, vcpu);
                    let len = size.min(ACCESS_BYTES_MAX);
                    if base == APIC_BASE_DEFAULT && offset == u64::from(lapic::reg::ICR_LOW) {
                        state.ipi_sent = true;
                    }
                    state
                        .bus
                        .mmio_write(ctx, Gpa(base + offset), &value.to_le_bytes()[..len]);
                },
            ),
        )?;
    }
    Ok(())
}

/// If the vCPU took the vector offered to it (the instance no longer
/// holds it), the local APIC moves it from IRR to ISR. Not requested any
/// more if the APIC was reset meanwhile (an INIT to itself): then nothing
/// moves. A failed register read leaves the offer for the slice's end.
fn settle_taken(uc: &Unicorn<'_, ()>, state: &mut HookState, vcpu: VcpuId) {
    let v = usize::from(vcpu.0);
    let Some(vector) = state.offered[v] else {
        return;
    };
    let Ok(raised) = uc.reg_read(regs::pseudo::IRQ) else {
        return;
    };
    if u8::try_from(raised).is_err() {
        state.offered[v] = None;
        if let Some(pc) = state.bus.pc_mut() {
            pc.taken(vcpu, Vector(vector));
        }
    }
}

/// Which MSR instruction a hook serves.
#[derive(Clone, Copy)]
enum MsrAccess {
    Read,
    Write,
}

/// RDMSR and WRMSR of the platform's MSRs (IA32_APIC_BASE,
/// IA32_TSC_DEADLINE) reach it; the others stay QEMU's. A write the
/// platform refuses is dropped (no #GP: the hook cannot raise one).
///
/// # Safety
/// `uc` is the live instance calling an MSR hook and `user_data` the
/// pointer [`install_msr_hooks`] registered.
unsafe fn msr_access(uc: *mut uc_engine, user_data: *mut c_void, access: MsrAccess) -> i32 {
    // SAFETY: `user_data` is `Rc::as_ptr` of the engine's `Shared`, which
    // outlives every unicorn instance (the engine drops them first), and
    // hooks run on the engine's thread while no other borrow is active.
    let shared = unsafe { &*(user_data as *const RefCell<HookState>) };
    let mut state = shared.borrow_mut();
    let Some(vcpu) = state.running else {
        return 0;
    };
    let ctx = io_context(&state, vcpu);
    let Some(pc) = state.bus.pc_mut() else {
        return 0;
    };
    let [rcx, rax, rdx] = [RegisterX86::RCX, RegisterX86::RAX, RegisterX86::RDX].map(|reg| {
        let mut value = 0u64;
        // SAFETY: `uc` is the live engine calling this hook; the value is
        // the 8-byte integer uc_reg_read writes for a 64-bit register.
        unsafe { uc_reg_read(uc, reg as i32, (&raw mut value).cast()) };
        value
    });
    let msr = rcx as u32;
    match access {
        MsrAccess::Read => {
            let Some(value) = pc.msr_read(ctx, msr) else {
                return 0;
            };
            for (reg, half) in [
                (RegisterX86::RAX, value & 0xffff_ffff),
                (RegisterX86::RDX, value >> 32),
            ] {
                // SAFETY: as above; an 8-byte integer for a 64-bit register.
                unsafe { uc_reg_write(uc, reg as i32, (&raw const half).cast()) };
            }
            1
        }
        MsrAccess::Write => {
            let value = (rdx << 32) | (rax & 0xffff_ffff);
            match pc.msr_write(ctx, msr, value) {
                MsrWrite::Done | MsrWrite::GeneralProtection => 1,
                MsrWrite::NotMine => 0,
            }
        }
    }
}

unsafe extern "C" fn rdmsr_hook(uc: *mut uc_engine, user_data: *mut c_void) -> i32 {
    // SAFETY: unicorn calls this hook with its instance and the user data
    // `install_msr_hooks` registered.
    unsafe { msr_access(uc, user_data, MsrAccess::Read) }
}

unsafe extern "C" fn wrmsr_hook(uc: *mut uc_engine, user_data: *mut c_void) -> i32 {
    // SAFETY: as in `rdmsr_hook`.
    unsafe { msr_access(uc, user_data, MsrAccess::Write) }
}

/// Hooks RDMSR and WRMSR (our patch calls instruction hooks for them,
/// which must return whether they did the access: raw hooks, as rdtsc's).
pub(crate) fn install_msr_hooks(uc: &mut Vcpu, shared: &Shared) -> Result<(), uc_error> {
    // SAFETY: both read their user data as the `Shared` (see
    // `msr_access`) and have the signature our patch calls MSR hooks with.
    unsafe {
        crate::hooks::add_raw_insn_hook(uc, shared, X86Insn::RDMSR, rdmsr_hook)?;
        crate::hooks::add_raw_insn_hook(uc, shared, X86Insn::WRMSR, wrmsr_hook)
    }
}

/// CPUID leaf 1 of the instance as the platform shows it: the vCPU's
/// initial APIC ID, the APIC and the TSC-deadline timer, no x2APIC.
pub(crate) fn advertise(uc: &mut Vcpu, pc: &Pc, vcpu: VcpuId) -> Result<(), uc_error> {
    let model = CpuidRegs {
        ecx: uc.reg_read(regs::pseudo::FEAT_1_ECX)? as u32,
        edx: uc.reg_read(regs::pseudo::FEAT_1_EDX)? as u32,
        ..CpuidRegs::default()
    };
    let shown = pc.cpuid(vcpu, 1, model);
    uc.reg_write(regs::pseudo::FEAT_1_ECX, u64::from(shown.ecx))?;
    uc.reg_write(regs::pseudo::FEAT_1_EDX, u64::from(shown.edx))?;
    uc.reg_write(regs::pseudo::APIC_ID, u64::from(shown.ebx >> 24))
}

fn io_context(state: &HookState, vcpu: VcpuId) -> IoContext {
    IoContext {
        vcpu,
        now: state.quantum_start,
    }
}

/// Whether the vCPU's IF is set.
pub(crate) fn interrupts_enabled(uc: &Vcpu) -> Result<bool, uc_error> {
    const IF: u64 = 1 << 9;
    Ok(uc.reg_read(RegisterX86::RFLAGS)? & IF != 0)
}

/// Whether the platform has an interrupt for a halted `vcpu` that it takes
/// (IF set): it wakes.
pub(crate) fn wakes(state: &HookState, uc: &Vcpu, vcpu: VcpuId) -> Result<bool, uc_error> {
    let pending = state.bus.pc().is_some_and(|pc| pc.pending(vcpu).is_some());
    Ok(pending && interrupts_enabled(uc)?)
}

/// At a slice start: raises the local APIC's pending vector in the
/// instance (or withdraws one no longer pending: a TPR raised, an INIT)
/// and notes it offered.
pub(crate) fn offer(uc: &mut Vcpu, state: &mut HookState, vcpu: VcpuId) -> Result<(), uc_error> {
    let Some(pc) = state.bus.pc() else {
        return Ok(());
    };
    let want = pc.pending(vcpu).map(|v| v.0);
    if regs::pending_interrupt(uc)? != want {
        uc.reg_write(regs::pseudo::IRQ, want.map_or(0x100, u64::from))?;
    }
    state.offered[usize::from(vcpu.0)] = want;
    Ok(())
}

/// After a slice: settles whether the vCPU took its offered vector.
pub(crate) fn note_taken(uc: &Vcpu, state: &mut HookState, vcpu: VcpuId) {
    settle_taken(uc, state, vcpu);
    // Offered again (or withdrawn) at the next slice start.
    state.offered[usize::from(vcpu.0)] = None;
}
