//! Moving a [`VcpuState`] in and out of a unicorn instance.

use machine::{RunState, VcpuState};
use unicorn_engine::unicorn_const::uc_error;
use unicorn_engine::RegisterX86;

use crate::hooks::Vcpu;

const GPRS: [RegisterX86; 16] = [
    RegisterX86::RAX,
    RegisterX86::RCX,
    RegisterX86::RDX,
    RegisterX86::RBX,
    RegisterX86::RSP,
    RegisterX86::RBP,
    RegisterX86::RSI,
    RegisterX86::RDI,
    RegisterX86::R8,
    RegisterX86::R9,
    RegisterX86::R10,
    RegisterX86::R11,
    RegisterX86::R12,
    RegisterX86::R13,
    RegisterX86::R14,
    RegisterX86::R15,
];

/// Reads the state this engine keeps. The segment selectors, EFER and the
/// GDT register are the boot values: unicorn starts in flat 64-bit mode and
/// the guests never change them. x87/SSE state is not carried (the guests
/// do not use it).
pub(crate) fn read(
    uc: &Vcpu,
    run_state: RunState,
    boot: &VcpuState,
) -> Result<VcpuState, uc_error> {
    let mut gprs = [0u64; 16];
    for (value, register) in gprs.iter_mut().zip(GPRS) {
        *value = uc.reg_read(register)?;
    }
    Ok(VcpuState {
        gprs,
        rip: uc.reg_read(RegisterX86::RIP)?,
        rflags: uc.reg_read(RegisterX86::RFLAGS)?,
        cr0: uc.reg_read(RegisterX86::CR0)?,
        cr3: uc.reg_read(RegisterX86::CR3)?,
        cr4: uc.reg_read(RegisterX86::CR4)?,
        efer: boot.efer,
        fs_base: uc.reg_read(RegisterX86::FS_BASE)?,
        gs_base: uc.reg_read(RegisterX86::GS_BASE)?,
        selectors: boot.selectors,
        gdt_base: boot.gdt_base,
        gdt_limit: boot.gdt_limit,
        run_state,
    })
}

/// Writes a state into an instance. CR4 goes before CR0 so paging is
/// enabled with PAE already on.
pub(crate) fn write(uc: &mut Vcpu, state: &VcpuState) -> Result<(), uc_error> {
    for (value, register) in state.gprs.iter().zip(GPRS) {
        uc.reg_write(register, *value)?;
    }
    uc.reg_write(RegisterX86::CR3, state.cr3)?;
    uc.reg_write(RegisterX86::CR4, state.cr4)?;
    uc.reg_write(RegisterX86::CR0, state.cr0)?;
    uc.reg_write(RegisterX86::RFLAGS, state.rflags)?;
    uc.reg_write(RegisterX86::FS_BASE, state.fs_base)?;
    uc.reg_write(RegisterX86::GS_BASE, state.gs_base)?;
    uc.reg_write(RegisterX86::RIP, state.rip)?;
    Ok(())
}
