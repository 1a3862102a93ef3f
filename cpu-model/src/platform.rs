//! The PC platform ([`machine::pc`]) on the emulated engine: the APIC
//! pages as unicorn MMIO reaching the device bus, and the local APIC's
//! interrupts offered at slice boundaries through the patched delivery
//! (`regs::pseudo::IRQ`), acknowledged (IRR to ISR) once the vCPU took
//! them. Only at slice boundaries, so deterministic: the engine ends a
//! slice at the platform's next timer deadline.

use machine::devices::IoContext;
use machine::pc::ioapic::{IOAPIC_BASE, IOAPIC_WINDOW_BYTES};
use machine::pc::lapic::{APIC_BASE_DEFAULT, APIC_PAGE_BYTES};
use machine::pc::vectors::Vector;
use machine::{Gpa, VcpuId};
use unicorn_engine::unicorn_const::uc_error;
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
    for (base, bytes) in [
        (APIC_BASE_DEFAULT, APIC_PAGE_BYTES),
        (IOAPIC_BASE, IOAPIC_WINDOW_BYTES),
    ] {
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
