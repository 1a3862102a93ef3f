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
        w.u8(match self.run_state {
            RunState::Running => 0,
            RunState::Halted => 1,
        });
    }

    /// Decodes a state written by [`VcpuState::encode`].
    pub fn decode(r: &mut Reader<'_>) -> Result<VcpuState, DecodeError> {
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
        let run_state = match r.u8()? {
            0 => RunState::Running,
            1 => RunState::Halted,
            other => return Err(DecodeError::Invalid(format!("run state {other}"))),
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
        })
    }
}
