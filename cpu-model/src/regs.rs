//! Moving a [`VcpuState`] in and out of a unicorn instance.

use machine::vcpu::{DescriptorTable, FpuState, Segment};
use machine::{RunState, SystemRegisters, VcpuState};
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

/// The pseudo-registers of our unicorn patch (cpu-model/unicorn/
/// delivery.patch; documented in its include/unicorn/x86.h).
pub(crate) mod pseudo {
    /// 1: deliver exceptions and interrupts through the guest's IDT.
    pub const DELIVER: i32 = 1000;
    /// Write a vector to raise it, more than 255 to withdraw; reads the
    /// pending vector or `u64::MAX`.
    pub const IRQ: i32 = 1001;
    /// The sti / mov ss interrupt shadow.
    pub const SHADOW: i32 = 1002;
    /// The vector whose delivery triple faulted, or `u64::MAX`.
    pub const TRIPLE: i32 = 1003;
    /// The CPU model's CPUID leaf 1 ECX feature word.
    pub const FEAT_1_ECX: i32 = 1004;
    /// The CPU model's CPUID leaf 1 EDX feature word.
    pub const FEAT_1_EDX: i32 = 1005;
    /// The initial APIC ID CPUID leaf 1 reports.
    pub const APIC_ID: i32 = 1006;
    /// The instruction budget of the following runs (0: none); reads
    /// the instructions left.
    pub const BUDGET: i32 = 1007;
    /// Write N: log the writes to pages below N (0: stop); reads N.
    pub const DIRTY_LOG: i32 = 1008;
    /// The pages written since the last read, a bitmap (read with
    /// uc_reg_read2); the read clears the log.
    pub const DIRTY_BITMAP: i32 = 1009;
    /// A whole segment register (uc_x86_mmr), in QEMU's order: es, cs,
    /// ss, ds, fs, gs from this id on.
    pub const SEG_ES: i32 = 1010;
    /// Write a guest-physical page number: drop the translations of code
    /// in that page (write only).
    pub const INVALIDATE: i32 = 1016;
}

/// Our segment order (cs, ds, es, fs, gs, ss) to QEMU's (es, cs, ss, ds,
/// fs, gs), as the offset from [`pseudo::SEG_ES`].
const SEGMENT_QEMU_INDEX: [i32; 6] = [1, 3, 0, 4, 5, 2];

const MSR_EFER: u32 = 0xc000_0080;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_FMASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_SYSENTER: [u32; 3] = [0x174, 0x175, 0x176];
const MSR_PAT: u32 = 0x277;

/// The boot segments, whole: unicorn boots 64-bit mode with every
/// selector 0 and descriptor caches without the L bit (its hidden flags
/// say 64-bit), and QEMU's delivery pushes the selectors (an `iretq` to
/// CS 0 is #GP), while a checkpoint carries the caches as read: a restore
/// of caches without L would run the code as 16-bit. So each register
/// gets what loading its selector from the state's GDT (in guest memory)
/// gives.
fn write_boot_segments(uc: &mut Vcpu, state: &VcpuState) -> Result<(), uc_error> {
    let mut segments = [Segment::default(); 6];
    for (segment, &selector) in segments.iter_mut().zip(&state.selectors) {
        let offset = u64::from(selector & !7);
        if offset + 7 <= u64::from(state.gdt_limit) {
            let mut entry = [0u8; 8];
            uc.mem_read(state.gdt_base + offset, &mut entry)?;
            *segment = Segment::from_descriptor(selector, u64::from_le_bytes(entry));
        }
    }
    write_segments(uc, &segments)
}

/// Writes cs, ds, es, fs, gs, ss whole; SS last: its DPL is the CPL.
fn write_segments(uc: &mut Vcpu, segments: &[Segment; 6]) -> Result<(), uc_error> {
    for (segment, index) in segments.iter().zip(SEGMENT_QEMU_INDEX) {
        if index != 2 {
            write_mmr(uc, pseudo::SEG_ES + index, mmr_of(segment))?;
        }
    }
    write_mmr(uc, pseudo::SEG_ES + 2, mmr_of(&segments[5]))
}

/// Reads a register that unicorn fills as a C struct or array
/// (uc_x86_mmr, 24 bytes; uc_x86_msr, 16 bytes, its id in the first 4;
/// an x87 register, 10 bytes; an xmm register, 16 bytes) into `buf`.
fn read_struct(uc: &Vcpu, regid: i32, buf: &mut [u8]) -> Result<(), uc_error> {
    assert!(
        matches!(buf.len(), 24 | 16 | 10),
        "a uc_x86_mmr, uc_x86_msr, x87 or xmm register"
    );
    // SAFETY: `buf` is live, writable and as long as what unicorn writes
    // for `regid` (the callers pass the mmr size for the segment and
    // table registers, the msr size for UC_X86_REG_MSR, 10 bytes for
    // FP0-7 and 16 for XMM0-15); the instance is not running (no hook is
    // on the stack).
    let error = unsafe {
        unicorn_engine::unicorn_const::uc_reg_read(uc.get_handle(), regid, buf.as_mut_ptr().cast())
    };
    match error {
        uc_error::OK => Ok(()),
        other => Err(other),
    }
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"))
}

/// A uc_x86_mmr's fields: selector, base, limit, QEMU's flags.
fn read_mmr(uc: &Vcpu, regid: i32) -> Result<(u16, u64, u32, u32), uc_error> {
    let mut b = [0u8; 24];
    read_struct(uc, regid, &mut b)?;
    let selector = u16::from_le_bytes([b[0], b[1]]);
    Ok((
        selector,
        le_u64(&b[8..]),
        le_u32(&b[16..]),
        le_u32(&b[20..]),
    ))
}

fn write_mmr(
    uc: &mut Vcpu,
    regid: i32,
    (selector, base, limit, flags): (u16, u64, u32, u32),
) -> Result<(), uc_error> {
    let mut b = [0u8; 24];
    b[0..2].copy_from_slice(&selector.to_le_bytes());
    b[8..16].copy_from_slice(&base.to_le_bytes());
    b[16..20].copy_from_slice(&limit.to_le_bytes());
    b[20..24].copy_from_slice(&flags.to_le_bytes());
    uc.reg_write_long(regid, &b)
}

fn read_msr(uc: &Vcpu, id: u32) -> Result<u64, uc_error> {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&id.to_le_bytes());
    read_struct(uc, RegisterX86::MSR as i32, &mut b)?;
    Ok(le_u64(&b[8..]))
}

fn write_msr(uc: &mut Vcpu, id: u32, value: u64) -> Result<(), uc_error> {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&id.to_le_bytes());
    b[8..16].copy_from_slice(&value.to_le_bytes());
    uc.reg_write_long(RegisterX86::MSR, &b)
}

/// QEMU keeps a descriptor's high dword (access rights in bits 8-23);
/// the checkpoint keeps VMX's access-rights layout, those bits shifted.
fn segment_of((selector, base, limit, flags): (u16, u64, u32, u32)) -> Segment {
    Segment {
        selector,
        base,
        limit,
        attributes: ((flags >> 8) & 0xf0ff) as u16,
    }
}

fn mmr_of(segment: &Segment) -> (u16, u64, u32, u32) {
    let flags = (u32::from(segment.attributes) & 0xf0ff) << 8;
    (segment.selector, segment.base, segment.limit, flags)
}

/// Whether the instance delivers through the guest's IDT.
pub(crate) fn delivering(uc: &Vcpu) -> Result<bool, uc_error> {
    Ok(uc.reg_read(pseudo::DELIVER)? != 0)
}

/// The IDT limit: a guest with none (0) keeps faults as errors.
pub(crate) fn idt_limit(uc: &Vcpu) -> Result<u32, uc_error> {
    Ok(read_mmr(uc, RegisterX86::IDTR as i32)?.2)
}

/// The vector raised and not yet taken.
pub(crate) fn pending_interrupt(uc: &Vcpu) -> Result<Option<u8>, uc_error> {
    Ok(u8::try_from(uc.reg_read(pseudo::IRQ)?).ok())
}

/// The x87 registers in physical order (R0-R7, what FXSAVE's tag word
/// numbers), not stack order (ST0-7, which moves with the top of stack).
const FP_PHYSICAL: [RegisterX86; 8] = [
    RegisterX86::FP0,
    RegisterX86::FP1,
    RegisterX86::FP2,
    RegisterX86::FP3,
    RegisterX86::FP4,
    RegisterX86::FP5,
    RegisterX86::FP6,
    RegisterX86::FP7,
];

const XMM: [RegisterX86; 16] = [
    RegisterX86::XMM0,
    RegisterX86::XMM1,
    RegisterX86::XMM2,
    RegisterX86::XMM3,
    RegisterX86::XMM4,
    RegisterX86::XMM5,
    RegisterX86::XMM6,
    RegisterX86::XMM7,
    RegisterX86::XMM8,
    RegisterX86::XMM9,
    RegisterX86::XMM10,
    RegisterX86::XMM11,
    RegisterX86::XMM12,
    RegisterX86::XMM13,
    RegisterX86::XMM14,
    RegisterX86::XMM15,
];

/// The last x87 instruction's and operand's addresses: QEMU keeps them,
/// but executes no instruction that reads them back except FXSAVE, so
/// they round-trip as values.
fn read_fpu(uc: &Vcpu) -> Result<FpuState, uc_error> {
    let mut fpu = FpuState {
        fcw: uc.reg_read(RegisterX86::FPCW)? as u16,
        fsw: uc.reg_read(RegisterX86::FPSW)? as u16,
        ftw: uc.reg_read(RegisterX86::FPTAG)? as u16,
        fop: uc.reg_read(RegisterX86::FOP)? as u16,
        fip: uc.reg_read(RegisterX86::FIP)?,
        fdp: uc.reg_read(RegisterX86::FDP)?,
        mxcsr: uc.reg_read(RegisterX86::MXCSR)? as u32,
        ..FpuState::default()
    };
    for (value, register) in fpu.st.iter_mut().zip(FP_PHYSICAL) {
        read_struct(uc, register as i32, value)?;
    }
    for (value, register) in fpu.xmm.iter_mut().zip(XMM) {
        let mut bytes = [0u8; 16];
        read_struct(uc, register as i32, &mut bytes)?;
        *value = u128::from_le_bytes(bytes);
    }
    Ok(fpu)
}

/// Writes the x87/SSE state: the status word first (it sets the top of
/// stack), the tag word after the registers (QEMU keeps only its empty
/// bits and computes the rest from the registers, as FXSAVE does).
fn write_fpu(uc: &mut Vcpu, fpu: &FpuState) -> Result<(), uc_error> {
    uc.reg_write(RegisterX86::FPCW, u64::from(fpu.fcw))?;
    uc.reg_write(RegisterX86::FPSW, u64::from(fpu.fsw))?;
    for (value, register) in fpu.st.iter().zip(FP_PHYSICAL) {
        uc.reg_write_long(register, value)?;
    }
    uc.reg_write(RegisterX86::FPTAG, u64::from(fpu.ftw))?;
    uc.reg_write(RegisterX86::FOP, u64::from(fpu.fop))?;
    uc.reg_write(RegisterX86::FIP, fpu.fip)?;
    uc.reg_write(RegisterX86::FDP, fpu.fdp)?;
    uc.reg_write(RegisterX86::MXCSR, u64::from(fpu.mxcsr))?;
    for (value, register) in fpu.xmm.iter().zip(XMM) {
        uc.reg_write_long(register, &value.to_le_bytes())?;
    }
    Ok(())
}

fn read_system(uc: &Vcpu) -> Result<SystemRegisters, uc_error> {
    let mut segments = [Segment::default(); 6];
    for (segment, index) in segments.iter_mut().zip(SEGMENT_QEMU_INDEX) {
        *segment = segment_of(read_mmr(uc, pseudo::SEG_ES + index)?);
    }
    let idt = read_mmr(uc, RegisterX86::IDTR as i32)?;
    Ok(SystemRegisters {
        segments,
        tr: segment_of(read_mmr(uc, RegisterX86::TR as i32)?),
        ldtr: segment_of(read_mmr(uc, RegisterX86::LDTR as i32)?),
        idt: DescriptorTable {
            base: idt.1,
            limit: u16::try_from(idt.2).unwrap_or(u16::MAX),
        },
        cr2: uc.reg_read(RegisterX86::CR2)?,
        cr8: uc.reg_read(RegisterX86::CR8)?,
        star: read_msr(uc, MSR_STAR)?,
        lstar: read_msr(uc, MSR_LSTAR)?,
        cstar: read_msr(uc, MSR_CSTAR)?,
        sfmask: read_msr(uc, MSR_FMASK)?,
        kernel_gs_base: read_msr(uc, MSR_KERNEL_GS_BASE)?,
        sysenter: [
            read_msr(uc, MSR_SYSENTER[0])?,
            read_msr(uc, MSR_SYSENTER[1])?,
            read_msr(uc, MSR_SYSENTER[2])?,
        ],
        pat: read_msr(uc, MSR_PAT)?,
        pending_interrupt: pending_interrupt(uc)?,
        interrupt_shadow: uc.reg_read(pseudo::SHADOW)? != 0,
        fpu: read_fpu(uc)?,
    })
}

/// Writes the system registers, after the control registers (a CS load
/// depends on EFER.LMA) and before the fs/gs bases (which win).
fn write_system(uc: &mut Vcpu, system: &SystemRegisters) -> Result<(), uc_error> {
    let idt = (0, system.idt.base, u32::from(system.idt.limit), 0);
    write_mmr(uc, RegisterX86::IDTR as i32, idt)?;
    write_mmr(uc, RegisterX86::TR as i32, mmr_of(&system.tr))?;
    write_mmr(uc, RegisterX86::LDTR as i32, mmr_of(&system.ldtr))?;
    write_segments(uc, &system.segments)?;
    uc.reg_write(RegisterX86::CR2, system.cr2)?;
    uc.reg_write(RegisterX86::CR8, system.cr8)?;
    for (id, value) in [
        (MSR_STAR, system.star),
        (MSR_LSTAR, system.lstar),
        (MSR_CSTAR, system.cstar),
        (MSR_FMASK, system.sfmask),
        (MSR_KERNEL_GS_BASE, system.kernel_gs_base),
        (MSR_SYSENTER[0], system.sysenter[0]),
        (MSR_SYSENTER[1], system.sysenter[1]),
        (MSR_SYSENTER[2], system.sysenter[2]),
        (MSR_PAT, system.pat),
    ] {
        write_msr(uc, id, value)?;
    }
    write_fpu(uc, &system.fpu)?;
    let pending = system.pending_interrupt.map_or(0x100, u64::from);
    uc.reg_write(pseudo::IRQ, pending)?;
    uc.reg_write(pseudo::SHADOW, u64::from(system.interrupt_shadow))
}

/// Reads the state this engine keeps. Without delivery (the assembled
/// guests) the segment selectors, EFER and the GDT register are the boot
/// values: unicorn starts in flat 64-bit mode and those guests never
/// change them; with it, they and the [`SystemRegisters`] are read, the
/// x87/SSE state among them (the assembled guests use none).
pub(crate) fn read(
    uc: &Vcpu,
    run_state: RunState,
    boot: &VcpuState,
) -> Result<VcpuState, uc_error> {
    let mut gprs = [0u64; 16];
    for (value, register) in gprs.iter_mut().zip(GPRS) {
        *value = uc.reg_read(register)?;
    }
    let mut state = VcpuState {
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
        system: None,
    };
    if delivering(uc)? {
        let system = read_system(uc)?;
        let gdt = read_mmr(uc, RegisterX86::GDTR as i32)?;
        state.efer = read_msr(uc, MSR_EFER)?;
        state.selectors = system.segments.map(|s| s.selector);
        state.gdt_base = gdt.1;
        state.gdt_limit = u16::try_from(gdt.2).unwrap_or(u16::MAX);
        state.system = Some(system);
    }
    Ok(state)
}

const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;

/// Takes the instance out of long mode (EFER.LMA clear), for a state
/// outside it (a vCPU after INIT, in real mode). LMA is read-only, as on
/// hardware: QEMU's WRMSR keeps it and only turning paging off clears it,
/// and an instance created in 64-bit mode has LMA set with CR0.PG clear.
/// So paging goes on (with LME and PAE, which QEMU requires to enter long
/// mode) and off again; the caller then writes every register this
/// touches.
fn leave_long_mode(uc: &mut Vcpu) -> Result<(), uc_error> {
    let efer = read_msr(uc, MSR_EFER)?;
    if efer & EFER_LMA == 0 {
        return Ok(());
    }
    let cr0 = uc.reg_read(RegisterX86::CR0)?;
    if cr0 & CR0_PG == 0 {
        write_msr(uc, MSR_EFER, efer | EFER_LME)?;
        let cr4 = uc.reg_read(RegisterX86::CR4)?;
        uc.reg_write(RegisterX86::CR4, cr4 | CR4_PAE)?;
        uc.reg_write(RegisterX86::CR0, cr0 | CR0_PG)?;
    }
    uc.reg_write(RegisterX86::CR0, cr0 & !CR0_PG)?;
    assert_eq!(
        read_msr(uc, MSR_EFER)? & EFER_LMA,
        0,
        "paging off left long mode"
    );
    Ok(())
}

/// Writes a state into an instance. CR4 goes before CR0 so paging is
/// enabled with PAE already on. A state with [`SystemRegisters`] turns
/// delivery through the IDT on (only a delivering instance has them).
pub(crate) fn write(uc: &mut Vcpu, state: &VcpuState) -> Result<(), uc_error> {
    for (value, register) in state.gprs.iter().zip(GPRS) {
        uc.reg_write(register, *value)?;
    }
    if state.system.is_some() && state.efer & EFER_LMA == 0 {
        leave_long_mode(uc)?;
    }
    if state.system.is_some() {
        write_msr(uc, MSR_EFER, state.efer)?;
    }
    // The boot GDT too: a delivery loads CS from it.
    let gdt = (0, state.gdt_base, u32::from(state.gdt_limit), 0);
    write_mmr(uc, RegisterX86::GDTR as i32, gdt)?;
    uc.reg_write(RegisterX86::CR3, state.cr3)?;
    uc.reg_write(RegisterX86::CR4, state.cr4)?;
    uc.reg_write(RegisterX86::CR0, state.cr0)?;
    uc.reg_write(RegisterX86::RFLAGS, state.rflags)?;
    match &state.system {
        Some(system) => {
            write_system(uc, system)?;
            uc.reg_write(pseudo::DELIVER, 1)?;
        }
        None => {
            write_boot_segments(uc, state)?;
            // unicorn starts with control word 0 yet rounds at 64 bits:
            // a state of its own, which a restore (whose control word
            // write sets the rounding) could not reproduce.
            write_fpu(uc, &FpuState::default())?;
            uc.reg_write(pseudo::DELIVER, 0)?;
        }
    }
    uc.reg_write(RegisterX86::FS_BASE, state.fs_base)?;
    uc.reg_write(RegisterX86::GS_BASE, state.gs_base)?;
    uc.reg_write(RegisterX86::RIP, state.rip)?;
    Ok(())
}
