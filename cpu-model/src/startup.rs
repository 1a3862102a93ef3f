//! INIT and start-up IPIs on the emulated engine: the PC platform's
//! [`PcAction`]s applied to the vCPUs they name. The engine applies every
//! queued action at the end of the slice whose ICR write sent it, and
//! before a run's first slice: the target is reset or started before it
//! or any other vCPU runs again, at the same point in every run of a
//! seed. The sender's slice does not stop at the write (`emu_stop` from
//! an MMIO callback leaves rip at the writing instruction, which would
//! send it again), so an IPI to the sender itself (Linux sends none of
//! these to itself) takes effect at most the rest of its slice late. The waiting itself is the local APIC's
//! [`machine::pc::lapic::Startup`], and a start-up not yet applied is in
//! the platform's action queue: both travel in the platform's part of a
//! checkpoint, and a vCPU that took its start-up has the registers of
//! [`startup::after_startup`], which its own state carries.

use machine::pc::lapic::Processor;
use machine::pc::{startup, Pc, PcAction};
use machine::{EngineError, FaultKind, RunState, VcpuId, VcpuState};

use crate::hooks::{Delivery, HookState};
use crate::{backend, regs, EmuEngine};

/// Whether `vcpu` waits for a start-up IPI (never on a machine without
/// the PC platform).
pub(crate) fn waits(state: &HookState, vcpu: VcpuId) -> bool {
    state.bus.pc().is_some_and(|pc| pc.waits_for_startup(vcpu))
}

impl EmuEngine {
    /// Applies the platform's queued INITs and start-ups, in the order
    /// they were sent.
    pub(crate) fn apply_platform_actions(&mut self) -> Result<(), EngineError> {
        loop {
            let action = self
                .shared
                .borrow_mut()
                .bus
                .pc_mut()
                .and_then(Pc::poll_action);
            let Some(action) = action else {
                return Ok(());
            };
            self.apply(action)?;
        }
    }

    fn apply(&mut self, action: PcAction) -> Result<(), EngineError> {
        match action {
            // An application processor now waits for its start-up IPI in
            // INIT's state, as on hardware. The bootstrap processor would
            // restart at the reset vector, in firmware this machine does
            // not have.
            PcAction::Init { vcpu } if !self.is_bootstrap(vcpu) => {
                self.reset(vcpu, &startup::after_init())
            }
            PcAction::Init { vcpu } => Err(self.unsupported(
                vcpu,
                "INIT of the bootstrap processor (it restarts at the reset vector, \
                 and this machine has no firmware there)",
            )),
            PcAction::Startup { vcpu, vector } => self.reset(vcpu, &startup::after_startup(vector)),
            PcAction::Nmi { vcpu } => Err(self.unsupported(
                vcpu,
                "a non-maskable interrupt (the emulated engine does not deliver NMIs)",
            )),
        }
    }

    /// Puts `vcpu` in `state`: its instance's registers, no interrupt
    /// offered, delivery through its (real-mode) IDT.
    fn reset(&mut self, vcpu: VcpuId, state: &VcpuState) -> Result<(), EngineError> {
        let v = usize::from(vcpu.0);
        if v >= self.vcpus.len() {
            return Err(EngineError::NoSuchVcpu(vcpu.0));
        }
        regs::write(&mut self.vcpus[v], state).map_err(backend)?;
        self.run_states[v] = RunState::Running;
        let mut shared = self.shared.borrow_mut();
        shared.delivery[v] = Delivery::Idt;
        shared.offered[v] = None;
        Ok(())
    }

    fn is_bootstrap(&self, vcpu: VcpuId) -> bool {
        let state = self.shared.borrow();
        let pc = state.bus.pc().expect("only the platform sends INIT");
        pc.lapic(vcpu).processor() == Processor::Bootstrap
    }

    fn unsupported(&self, vcpu: VcpuId, what: &str) -> EngineError {
        self.guest_fault(
            usize::from(vcpu.0),
            FaultKind::Other(format!("{what}: unsupported")),
        )
    }
}
