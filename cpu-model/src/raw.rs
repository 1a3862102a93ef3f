//! Raw unicorn, as a baseline for `lockstep bench emu`: the same guest
//! image and boot state, one instance per vCPU, no devices, no dirty
//! tracking, no scheduler: each instance runs its share in one counted
//! `emu_start`.

use machine::guests::GuestImage;
use machine::{EngineError, Shape};
use unicorn_engine::unicorn_const::{Arch, Mode, Prot, X86CpuModel};
use unicorn_engine::Unicorn;

use crate::backend;

/// Instances ready to run, one per vCPU, each with its own copy of memory.
pub struct RawUnicorn {
    vcpus: Vec<Unicorn<'static, ()>>,
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
        }
        Ok(RawUnicorn { vcpus })
    }

    /// Runs every instance for `per_vcpu` instructions.
    pub fn run(&mut self, per_vcpu: u64) -> Result<(), EngineError> {
        let count = usize::try_from(per_vcpu).expect("fits usize");
        for uc in &mut self.vcpus {
            let rip = uc.pc_read().map_err(backend)?;
            uc.emu_start(rip, 0, 0, count).map_err(backend)?;
        }
        Ok(())
    }
}
