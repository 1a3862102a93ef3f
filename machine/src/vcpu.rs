//! The architectural state of one vCPU, as saved in checkpoints.

use crate::codec::DecodeError;
use crate::codec::{Reader, Writer};

/// Whether a vCPU executes or sleeps in `hlt` until an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Executing instructions.
    Running,
    /// Executed `hlt`; wakes when the device bus reports an event.
    Halted,
}

/// Indices into [`VcpuState::gprs`], in x86 encoding order.
pub mod gpr {
    /// rax
    pub const RAX: usize = 0;
    /// rcx
    pub const RCX: usize = 1;
    /// rdx
    pub const RDX: usize = 2;
    /// rbx
    pub const RBX: usize = 3;
    /// rsp
    pub const RSP: usize = 4;
    /// rbp
    pub const RBP: usize = 5;
    /// rsi
    pub const RSI: usize = 6;
    /// rdi
    pub const RDI: usize = 7;
}

/// The state of one vCPU that a checkpoint carries. Both engines start from
/// [`crate::boot::initial_vcpu_state`] and save/restore this struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuState {
    /// rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15.
    pub gprs: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags register.
    pub rflags: u64,
    /// Control register 0 (PE, PG, ...).
    pub cr0: u64,
    /// Control register 3: the PML4's address.
    pub cr3: u64,
    /// Control register 4 (PAE, ...).
    pub cr4: u64,
    /// The EFER MSR (LME, LMA).
    pub efer: u64,
    /// fs base address.
    pub fs_base: u64,
    /// gs base address.
    pub gs_base: u64,
    /// Selectors of cs, ds, es, fs, gs, ss.
    pub selectors: [u16; 6],
    /// GDT base address.
    pub gdt_base: u64,
    /// GDT limit.
    pub gdt_limit: u16,
    /// Running or halted.
    pub run_state: RunState,
    /// The rest of the system state, for guests that run their own
    /// kernel (an IDT, rings, system calls); `None` for the assembled
    /// guests, which keep the boot values of everything it holds.
    pub system: Option<SystemRegisters>,
}

/// One segment register whole, as a descriptor load fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// The selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (granularity applied).
    pub limit: u32,
    /// Access rights in VMX's layout (as KVM's segments carry them too):
    /// type bits 0-3, S 4, DPL 5-6, P 7, AVL 12, L 13, D/B 14, G 15.
    pub attributes: u16,
}

/// A descriptor-table register (IDTR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// Base address.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u16,
}

/// The system state of a vCPU that runs a kernel of its own: what a
/// checkpoint must carry so a vCPU in an interrupt handler or in ring 3
/// resumes as it was. The GDT, EFER and fs/gs bases stay in
/// [`VcpuState`]; where `segments` repeats fs/gs bases, those of
/// [`VcpuState`] win.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SystemRegisters {
    /// cs, ds, es, fs, gs, ss (the order of [`VcpuState::selectors`]).
    pub segments: [Segment; 6],
    /// The task register (the TSS: RSP0, IST stacks).
    pub tr: Segment,
    /// The local descriptor table register.
    pub ldtr: Segment,
    /// The interrupt descriptor table register.
    pub idt: DescriptorTable,
    /// The page-fault address.
    pub cr2: u64,
    /// The task priority.
    pub cr8: u64,
    /// IA32_STAR: syscall/sysret selectors.
    pub star: u64,
    /// IA32_LSTAR: the 64-bit syscall entry.
    pub lstar: u64,
    /// IA32_CSTAR: the compatibility-mode syscall entry.
    pub cstar: u64,
    /// IA32_FMASK: rflags bits syscall clears.
    pub sfmask: u64,
    /// IA32_KERNEL_GS_BASE: what swapgs exchanges gs base with.
    pub kernel_gs_base: u64,
    /// IA32_SYSENTER_CS, _ESP, _EIP.
    pub sysenter: [u64; 3],
    /// IA32_PAT.
    pub pat: u64,
    /// An external interrupt raised and not yet taken.
    pub pending_interrupt: Option<u8>,
    /// The instruction after `sti` or `mov ss` blocks interrupts.
    pub interrupt_shadow: bool,
    /// x87, MMX and SSE registers.
    pub fpu: FpuState,
}

/// The x87, MMX and SSE state, the fields of an FXSAVE image: a kernel
/// guest's processes compute with it, and Linux itself uses SSE (in
/// `memcpy` variants, checksums, crypto) between `kernel_fpu_begin` and
/// `_end`, so a vCPU stopped anywhere may hold live values in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FpuState {
    /// The x87 control word.
    pub fcw: u16,
    /// The x87 status word, the top of stack in bits 11-13.
    pub fsw: u16,
    /// The full x87 tag word, two bits per physical register (3: empty).
    pub ftw: u16,
    /// The last x87 opcode.
    pub fop: u16,
    /// The last x87 instruction's address.
    pub fip: u64,
    /// The last x87 operand's address.
    pub fdp: u64,
    /// SSE control and status.
    pub mxcsr: u32,
    /// Physical x87 registers R0-R7 (also MMX0-7): the 64-bit
    /// significand, then sign and exponent, little-endian.
    pub st: [[u8; 10]; 8],
    /// xmm0-xmm15.
    pub xmm: [u128; 16],
}

impl Default for FpuState {
    /// The state at power-on and after INIT: every x87 register empty,
    /// all exceptions masked.
    fn default() -> FpuState {
        FpuState {
            fcw: 0x37f,
            fsw: 0,
            ftw: 0xffff,
            fop: 0,
            fip: 0,
            fdp: 0,
            mxcsr: 0x1f80,
            st: [[0; 10]; 8],
            xmm: [0; 16],
        }
    }
}

/// The length of an [`FpuState`]'s encoding.
pub const FPU_BYTES: usize = 4 * 2 + 2 * 8 + 4 + 8 * 10 + 16 * 16;

impl FpuState {
    fn encode(&self, w: &mut Writer) {
        for value in [self.fcw, self.fsw, self.ftw, self.fop] {
            w.u16(value);
        }
        w.u64(self.fip);
        w.u64(self.fdp);
        w.u32(self.mxcsr);
        for register in &self.st {
            w.raw(register);
        }
        for register in self.xmm {
            w.raw(&register.to_le_bytes());
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<FpuState, DecodeError> {
        let mut fpu = FpuState {
            fcw: r.u16()?,
            fsw: r.u16()?,
            ftw: r.u16()?,
            fop: r.u16()?,
            fip: r.u64()?,
            fdp: r.u64()?,
            mxcsr: r.u32()?,
            ..FpuState::default()
        };
        for register in &mut fpu.st {
            register.copy_from_slice(r.raw(10)?);
        }
        for register in &mut fpu.xmm {
            let bytes = r.raw(16)?.try_into().expect("16 bytes");
            *register = u128::from_le_bytes(bytes);
        }
        Ok(fpu)
    }
}

/// Set in the run-state byte when [`SystemRegisters`] follow it.
const SYSTEM_FOLLOWS: u8 = 0x80;

impl Segment {
    /// The segment register that loading `selector` with `descriptor`
    /// (its 8-byte GDT entry) gives: the null segment for selector 0 or
    /// a descriptor that is not present.
    pub fn from_descriptor(selector: u16, descriptor: u64) -> Segment {
        const PRESENT: u64 = 1 << 47;
        const GRANULAR: u64 = 1 << 55;
        if selector >> 3 == 0 || descriptor & PRESENT == 0 {
            return Segment::default();
        }
        let base = (descriptor >> 16) & 0xff_ffff | ((descriptor >> 56) & 0xff) << 24;
        let limit = ((descriptor & 0xffff) | ((descriptor >> 48) & 0xf) << 16) as u32;
        let access = (descriptor >> 40) & 0xff;
        let flags = (descriptor >> 52) & 0xf;
        Segment {
            selector,
            base,
            limit: if descriptor & GRANULAR != 0 {
                limit << 12 | 0xfff
            } else {
                limit
            },
            attributes: (access | flags << 12) as u16,
        }
    }

    fn encode(&self, w: &mut Writer) {
        w.u16(self.selector);
        w.u64(self.base);
        w.u32(self.limit);
        w.u16(self.attributes);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Segment, DecodeError> {
        Ok(Segment {
            selector: r.u16()?,
            base: r.u64()?,
            limit: r.u32()?,
            attributes: r.u16()?,
        })
    }
}

impl SystemRegisters {
    fn encode(&self, w: &mut Writer) {
        for segment in self.segments.iter().chain([&self.tr, &self.ldtr]) {
            segment.encode(w);
        }
        w.u64(self.idt.base);
        w.u16(self.idt.limit);
        for value in [
            self.cr2,
            self.cr8,
            self.star,
            self.lstar,
            self.cstar,
            self.sfmask,
            self.kernel_gs_base,
            self.sysenter[0],
            self.sysenter[1],
            self.sysenter[2],
            self.pat,
        ] {
            w.u64(value);
        }
        // 0x100 = none: one field for the vector and its absence.
        w.u16(self.pending_interrupt.map_or(0x100, u16::from));
        w.u8(u8::from(self.interrupt_shadow));
        self.fpu.encode(w);
    }

    fn decode(r: &mut Reader<'_>, layout: VcpuLayout) -> Result<SystemRegisters, DecodeError> {
        let mut segments = [Segment::default(); 6];
        for segment in &mut segments {
            *segment = Segment::decode(r)?;
        }
        let tr = Segment::decode(r)?;
        let ldtr = Segment::decode(r)?;
        let idt = DescriptorTable {
            base: r.u64()?,
            limit: r.u16()?,
        };
        let mut msrs = [0u64; 11];
        for value in &mut msrs {
            *value = r.u64()?;
        }
        let pending_interrupt = match r.u16()? {
            0x100 => None,
            vector @ 0..=0xff => Some(vector as u8),
            other => return Err(DecodeError::Invalid(format!("pending vector {other}"))),
        };
        let interrupt_shadow = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(DecodeError::Invalid(format!("interrupt shadow {other}"))),
        };
        let fpu = match layout {
            VcpuLayout::Full => FpuState::decode(r)?,
            VcpuLayout::SystemWithoutFpu | VcpuLayout::NoSystem => FpuState::default(),
        };
        let [cr2, cr8, star, lstar, cstar, sfmask, kernel_gs_base, cs, esp, eip, pat] = msrs;
        Ok(SystemRegisters {
            segments,
            tr,
            ldtr,
            idt,
            cr2,
            cr8,
            star,
            lstar,
            cstar,
            sfmask,
            kernel_gs_base,
            sysenter: [cs, esp, eip],
            pat,
            pending_interrupt,
            interrupt_shadow,
            fpu,
        })
    }
}

impl VcpuState {
    /// Appends the encoding of this state.
    pub fn encode(&self, w: &mut Writer) {
        for value in self.gprs {
            w.u64(value);
        }
        for value in [
            self.rip,
            self.rflags,
            self.cr0,
            self.cr3,
            self.cr4,
            self.efer,
            self.fs_base,
            self.gs_base,
        ] {
            w.u64(value);
        }
        for selector in self.selectors {
            w.u16(selector);
        }
        w.u64(self.gdt_base);
        w.u16(self.gdt_limit);
        let run_state = match self.run_state {
            RunState::Running => 0,
            RunState::Halted => 1,
        };
        match &self.system {
            None => w.u8(run_state),
            Some(system) => {
                w.u8(run_state | SYSTEM_FOLLOWS);
                system.encode(w);
            }
        }
    }

    /// Decodes a state written by [`VcpuState::encode`] or, as `layout`
    /// says, by an older version of it.
    pub fn decode(r: &mut Reader<'_>, layout: VcpuLayout) -> Result<VcpuState, DecodeError> {
        let mut gprs = [0u64; 16];
        for value in &mut gprs {
            *value = r.u64()?;
        }
        let mut regs = [0u64; 8];
        for value in &mut regs {
            *value = r.u64()?;
        }
        let mut selectors = [0u16; 6];
        for selector in &mut selectors {
            *selector = r.u16()?;
        }
        let gdt_base = r.u64()?;
        let gdt_limit = r.u16()?;
        let byte = r.u8()?;
        let run_state = match byte & !SYSTEM_FOLLOWS {
            0 => RunState::Running,
            1 => RunState::Halted,
            other => return Err(DecodeError::Invalid(format!("run state {other}"))),
        };
        let system = match (byte & SYSTEM_FOLLOWS != 0, layout) {
            (false, _) => None,
            (true, VcpuLayout::NoSystem) => {
                return Err(DecodeError::Invalid(
                    "system registers in an encoding that cannot carry them".into(),
                ))
            }
            (true, layout) => Some(SystemRegisters::decode(r, layout)?),
        };
        let [rip, rflags, cr0, cr3, cr4, efer, fs_base, gs_base] = regs;
        Ok(VcpuState {
            gprs,
            rip,
            rflags,
            cr0,
            cr3,
            cr4,
            efer,
            fs_base,
            gs_base,
            selectors,
            gdt_base,
            gdt_limit,
            run_state,
            system,
        })
    }
}

/// What a [`VcpuState`] encoding may carry, by the checkpoint version
/// that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuLayout {
    /// Version 2: no [`SystemRegisters`].
    NoSystem,
    /// Versions 3 and 4: [`SystemRegisters`] without the x87/SSE state,
    /// which reads as the power-on state.
    SystemWithoutFpu,
    /// Version 5 on, and state hashes: everything.
    Full,
}
