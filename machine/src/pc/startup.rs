//! The registers of a vCPU after INIT and after the start-up IPI that
//! follows it (Intel SDM vol. 3, 10.1 and 10.4.4; 9.4's reset state): what
//! an engine writes into a vCPU when it applies [`super::PcAction::Init`]
//! and [`super::PcAction::Startup`], and what an application processor
//! that waits for its start-up IPI holds from power-up. Engine-agnostic
//! plain data, so both engines and every checkpoint agree on it.

use crate::vcpu::{DescriptorTable, FpuState, Segment, SystemRegisters};
use crate::{RunState, VcpuState};

/// CR0 after INIT: CD, NW and ET set, protection and paging off.
pub const CR0_AFTER_INIT: u64 = 0x6000_0010;
/// EFLAGS after INIT: only the always-one bit 1.
pub const RFLAGS_AFTER_INIT: u64 = 0x2;
/// IA32_PAT's power-up value (write-back, write-through, UC-, UC, twice).
pub const PAT_AFTER_INIT: u64 = 0x0007_0406_0007_0406;
/// A real-mode segment's limit: 64 KiB.
const REAL_MODE_LIMIT: u32 = 0xffff;
/// Access rights (VMX layout) of real-mode code: present, S, execute/read,
/// accessed.
const REAL_MODE_CODE: u16 = 0x9b;
/// Access rights of real-mode data: present, S, read/write, accessed.
const REAL_MODE_DATA: u16 = 0x93;
/// The task register after INIT: present, a busy 32-bit TSS.
const TR_AFTER_INIT: u16 = 0x8b;
/// LDTR after INIT: present, an LDT.
const LDTR_AFTER_INIT: u16 = 0x82;
/// CS after INIT: the reset vector's segment, its base at the top of the
/// first 4 GiB (the firmware's reset vector, 0xffff_fff0).
const CS_AFTER_INIT: Segment = Segment {
    selector: 0xf000,
    base: 0xffff_0000,
    limit: REAL_MODE_LIMIT,
    attributes: REAL_MODE_CODE,
};
/// IP after INIT: 0xfff0 in CS.
const IP_AFTER_INIT: u64 = 0xfff0;

/// A flat 64 KiB real-mode data segment at 0.
fn real_mode_data() -> Segment {
    Segment {
        selector: 0,
        base: 0,
        limit: REAL_MODE_LIMIT,
        attributes: REAL_MODE_DATA,
    }
}

/// A vCPU just after INIT: real mode at the reset vector (CS 0xf000, base
/// 0xffff_0000, IP 0xfff0), every other segment flat 64 KiB at 0, the
/// descriptor tables at 0 with 64 KiB limits, CR0 0x6000_0010, EFER 0,
/// interrupts off, the x87/SSE state of [`FpuState::default`]. An
/// application processor waits in it for a start-up IPI. The general
/// registers are 0 (EDX's processor signature is the one a CPU model
/// would report; nothing Lockstep runs reads it). The APIC ID is the
/// local APIC's and stays unchanged.
pub fn after_init() -> VcpuState {
    let data = real_mode_data();
    // cs, ds, es, fs, gs, ss.
    let segments = [CS_AFTER_INIT, data, data, data, data, data];
    let tables = DescriptorTable {
        base: 0,
        limit: REAL_MODE_LIMIT as u16,
    };
    VcpuState {
        gprs: [0; 16],
        rip: IP_AFTER_INIT,
        rflags: RFLAGS_AFTER_INIT,
        cr0: CR0_AFTER_INIT,
        cr3: 0,
        cr4: 0,
        efer: 0,
        fs_base: 0,
        gs_base: 0,
        selectors: segments.map(|s| s.selector),
        gdt_base: tables.base,
        gdt_limit: tables.limit,
        run_state: RunState::Running,
        system: Some(SystemRegisters {
            segments,
            tr: Segment {
                attributes: TR_AFTER_INIT,
                ..real_mode_data()
            },
            ldtr: Segment {
                attributes: LDTR_AFTER_INIT,
                ..real_mode_data()
            },
            idt: tables,
            cr2: 0,
            cr8: 0,
            star: 0,
            lstar: 0,
            cstar: 0,
            sfmask: 0,
            kernel_gs_base: 0,
            sysenter: [0; 3],
            pat: PAT_AFTER_INIT,
            pending_interrupt: None,
            interrupt_shadow: false,
            fpu: FpuState::default(),
        }),
    }
}

/// A vCPU that took start-up IPI `vector` after INIT: the state of
/// [`after_init`] but CS = `vector << 8` with base `vector << 12` and IP 0,
/// so it runs the real-mode code at page `vector`.
pub fn after_startup(vector: u8) -> VcpuState {
    let mut state = after_init();
    let cs = Segment {
        selector: u16::from(vector) << 8,
        base: u64::from(vector) << 12,
        ..CS_AFTER_INIT
    };
    state.rip = 0;
    state.selectors[0] = cs.selector;
    if let Some(system) = &mut state.system {
        system.segments[0] = cs;
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_up_ipi_starts_real_mode_at_its_vector_page() {
        let state = after_startup(0x9a);
        let system = state.system.as_ref().expect("system registers");
        let cs = system.segments[0];
        assert_eq!((cs.selector, cs.base, cs.limit), (0x9a00, 0x9_a000, 0xffff));
        assert_eq!(state.rip, 0);
        assert_eq!(state.selectors[0], 0x9a00);
        assert_eq!(state.cr0, 0x6000_0010);
        assert_eq!(state.efer, 0);
        for data in &system.segments[1..] {
            assert_eq!((data.selector, data.base, data.limit), (0, 0, 0xffff));
        }
        assert_eq!(system.fpu, FpuState::default());
        let init = after_init();
        let reset = init.system.as_ref().expect("system registers").segments[0];
        assert_eq!(reset.base + init.rip, 0xffff_fff0, "the reset vector");
        assert_eq!(
            after_startup(0x10).system.expect("system").segments[1..],
            init.system.expect("system").segments[1..],
            "only CS and IP differ from INIT's state"
        );
    }
}
