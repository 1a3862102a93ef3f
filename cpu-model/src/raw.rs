//! Raw unicorn, as a baseline for `lockstep bench emu`: the same guest
//! image and boot state, one instance per vCPU, no devices, no dirty
//! tracking, no scheduler: each instance runs its share in one
//! `emu_start` on our patch's instruction budget (the engine's way of
//! counting, so the two differ only by what the machine adds).

use machine::guests::GuestImage;
use machine::{EngineError, Gpa, RunState, Shape, VcpuState};
use unicorn_engine::unicorn_const::{Arch, Mode, Prot, X86CpuModel};
use unicorn_engine::Unicorn;

use crate::backend;

/// Instances ready to run, one per vCPU, each with its own copy of memory.
pub struct RawUnicorn {
    vcpus: Vec<Unicorn<'static, ()>>,
    boot_states: Vec<VcpuState>,
}

impl std::fmt::Debug for RawUnicorn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawUnicorn")
            .field("vcpus", &self.vcpus.len())
            .finish()
    }
}

impl RawUnicorn {
    /// Boots `image` on every instance.
    pub fn new(shape: Shape, image: &GuestImage) -> Result<RawUnicorn, EngineError> {
        let memory = image.boot_memory(&shape);
        let mut vcpus = Vec::new();
        let mut boot_states = Vec::new();
        for v in 0..shape.vcpus() {
            let mut uc = Unicorn::new(Arch::X86, Mode::MODE_64).map_err(backend)?;
            uc.ctl_set_cpu_model(X86CpuModel::QEMU64 as i32)
                .map_err(backend)?;
            uc.mem_map(0, shape.memory_bytes(), Prot::ALL)
                .map_err(backend)?;
            uc.mem_write(0, &memory).map_err(backend)?;
            let state = machine::boot::initial_vcpu_state(&shape, v);
            crate::regs::write(&mut uc, &state).map_err(backend)?;
            vcpus.push(uc);
            boot_states.push(state);
        }
        Ok(RawUnicorn { vcpus, boot_states })
    }

    /// Runs every instance for `per_vcpu` instructions.
    pub fn run(&mut self, per_vcpu: u64) -> Result<(), EngineError> {
        for uc in &mut self.vcpus {
            let rip = uc.pc_read().map_err(backend)?;
            uc.reg_write(crate::regs::pseudo::BUDGET, per_vcpu)
                .map_err(backend)?;
            uc.emu_start(rip, 0, 0, 0).map_err(backend)?;
        }
        Ok(())
    }

    /// Runs every instance for `per_vcpu` instructions counted by
    /// unicorn's own `emu_start` count: a code hook on every instruction,
    /// the semantics the budget reproduces (tests compare the two).
    pub fn run_hook_counted(&mut self, per_vcpu: u64) -> Result<(), EngineError> {
        let count = usize::try_from(per_vcpu).expect("fits usize");
        for uc in &mut self.vcpus {
            let rip = uc.pc_read().map_err(backend)?;
            uc.emu_start(rip, 0, 0, count).map_err(backend)?;
        }
        Ok(())
    }

    /// The registers of vCPU `v`.
    pub fn vcpu_state(&self, v: u16) -> Result<VcpuState, EngineError> {
        let v = usize::from(v);
        let uc = self.vcpus.get(v).ok_or(EngineError::NoSuchVcpu(v as u16))?;
        crate::regs::read(uc, RunState::Running, &self.boot_states[v]).map_err(backend)
    }

    /// Reads `buf.len()` bytes at `gpa` of vCPU `v`'s copy of memory.
    pub fn read_memory(&self, v: u16, gpa: Gpa, buf: &mut [u8]) -> Result<(), EngineError> {
        let uc = self
            .vcpus
            .get(usize::from(v))
            .ok_or(EngineError::NoSuchVcpu(v))?;
        uc.mem_read(gpa.0, buf)
            .map_err(|_| EngineError::OutOfRange {
                gpa,
                len: buf.len(),
            })
    }
}
