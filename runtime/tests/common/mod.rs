//! What the KVM tests share: skipping without KVM, booting one guest on
//! both engines, running to idle, and the engine-neutral final state.
#![allow(dead_code)]

use cpu_model::{emulated_machine, EmuConfig, EmuEngine, Quantum};
use machine::codec::Writer;
use machine::devices::{MemStore, BLOCK_BYTES};
use machine::guests::GuestImage;
use machine::rng::Fnv64;
use machine::{Engine, Gpa, Instructions, Machine, RunExit, Shape, VcpuState, PAGE_SIZE};
use runtime::kvm::{kvm_machine, open_kvm, KvmEngine};

/// Disk blocks of every test machine.
pub const BLOCKS: u64 = 256;
/// Guest time per run call on KVM: 20 ms.
pub const KVM_SLICE: Instructions = Instructions(20_000_000);
/// Guest time per run call on the emulated engine: 20 M instructions.
pub const EMU_SLICE: Instructions = Instructions(20_000_000);
/// Most run calls before a machine must be idle.
pub const RUNS_MAX: u32 = 500;

/// True if KVM is usable; else prints a loud skip line, straight to
/// stderr so the test harness does not swallow it.
pub fn kvm_or_skip(test: &str) -> bool {
    match open_kvm() {
        Ok(_) => true,
        Err(e) => {
            use std::io::Write;
            let line = format!("SKIPPED: no /dev/kvm ({test}): {e}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            false
        }
    }
}

pub fn emu(shape: Shape, image: &GuestImage, seed: u64) -> Machine<EmuEngine> {
    let config = EmuConfig {
        seed,
        quantum: Quantum::default(),
    };
    emulated_machine(shape, image, config, Box::new(MemStore::new(BLOCKS))).expect("emu boots")
}

pub fn kvm(shape: Shape, image: &GuestImage) -> Machine<KvmEngine> {
    kvm_machine(shape, image, Box::new(MemStore::new(BLOCKS))).expect("kvm boots")
}

/// Runs `slice` at a time until every vCPU sleeps with nothing to do.
pub fn run_to_idle<E: Engine>(machine: &mut Machine<E>, slice: Instructions) {
    for _ in 0..RUNS_MAX {
        if machine.run(slice).expect("runs") == RunExit::Idle {
            return;
        }
    }
    panic!("not idle after {RUNS_MAX} runs");
}

/// The state both engines must agree on: everything but engine-private
/// state and guest time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    pub memory_hash: u64,
    pub vcpus: Vec<VcpuState>,
    pub devices_hash: u64,
    pub disk_hash: u64,
}

pub fn final_state<E: Engine>(machine: &mut Machine<E>) -> Final {
    let mut memory = Fnv64::default();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    for index in 0..machine.shape().pages() {
        let gpa = Gpa(u64::from(index) * PAGE_SIZE);
        machine
            .engine()
            .read_memory(gpa, &mut page)
            .expect("in range");
        memory.write(&page);
    }
    let mut devices = Writer::new();
    machine.bus().save(&mut devices);
    let mut devices_hash = Fnv64::default();
    devices_hash.write(&devices.into_bytes());
    let mut disk = Fnv64::default();
    let mut block = [0u8; BLOCK_BYTES];
    for number in 0..BLOCKS {
        machine
            .bus()
            .store()
            .read_block(number, &mut block)
            .expect("block");
        disk.write(&block);
    }
    Final {
        memory_hash: memory.finish(),
        vcpus: machine.vcpu_states().expect("states"),
        devices_hash: devices_hash.finish(),
        disk_hash: disk.finish(),
    }
}

/// Names the first difference between two final states.
pub fn assert_same(kvm: &Final, emu: &Final, what: &str) {
    for (v, (k, e)) in kvm.vcpus.iter().zip(&emu.vcpus).enumerate() {
        assert_eq!(k, e, "{what}: vCPU {v} differs (left KVM, right emulated)");
    }
    assert_eq!(kvm.memory_hash, emu.memory_hash, "{what}: memory differs");
    assert_eq!(kvm.devices_hash, emu.devices_hash, "{what}: devices differ");
    assert_eq!(kvm.disk_hash, emu.disk_hash, "{what}: disk differs");
}
