// Faults end a run with an error naming vCPU, rip and the code there;
// rdtsc and rdrand are fed from the engine's seeded clock and rng.

use cpu_model::{emulated_machine, EmuConfig, EmuEngine, Quantum};
use iced_x86::code_asm::*;
use machine::devices::MemStore;
use machine::guests::GuestImage;
use machine::layout::{GUEST_CODE, GUEST_DATA, MEMORY_BYTES_MIN};
use machine::{Engine, EngineError, FaultKind, Gpa, Instructions, Machine, Shape, VcpuId};

fn machine_with(
    vcpus: u16,
    seed: u64,
    emit: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Machine<EmuEngine> {
    let mut a = CodeAssembler::new(64).expect("64-bit");
    emit(&mut a).expect("assembles");
    let image = GuestImage {
        code: a.assemble(GUEST_CODE.0).expect("assembles"),
        params: [0; 8],
    };
    let shape = Shape::new(vcpus, MEMORY_BYTES_MIN).expect("valid");
    let config = EmuConfig {
        seed,
        quantum: Quantum::default(),
    };
    emulated_machine(shape, &image, config, Box::new(MemStore::new(1))).expect("boots")
}

fn park(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut park = a.create_label();
    a.set_label(&mut park)?;
    a.hlt()?;
    a.jmp(park)
}

#[test]
fn invalid_opcode_names_vcpu_rip_and_code() {
    let mut machine = machine_with(2, 1, |a| {
        let mut bad = a.create_label();
        a.cmp(rdi, 1)?;
        a.je(bad)?;
        park(a)?;
        a.set_label(&mut bad)?;
        a.nop()?;
        a.ud2()?;
        Ok(())
    });
    let error = machine.run(Instructions(100_000)).expect_err("faults");
    let machine::MachineError::Engine(EngineError::GuestFault {
        vcpu,
        rip,
        kind,
        disassembly,
    }) = error
    else {
        panic!("not a guest fault: {error}");
    };
    assert_eq!(vcpu, VcpuId(1));
    assert_eq!(kind, FaultKind::InvalidOpcode);
    assert!(
        disassembly.contains(&format!("=> {rip:016x}")),
        "{disassembly}"
    );
    assert!(disassembly.contains("ud2"), "{disassembly}");
}

#[test]
fn access_outside_memory_is_a_fault_not_a_panic() {
    let mut machine = machine_with(1, 1, |a| {
        a.mov(rax, 0x4000_0000u64)?;
        a.mov(rbx, qword_ptr(rax))?;
        park(a)
    });
    let error = machine.run(Instructions(1_000)).expect_err("faults");
    let text = error.to_string();
    assert!(text.contains("vCPU 0"), "{text}");
    assert!(text.contains("MemoryOutOfRange"), "{text}");
    assert!(text.contains("mov rbx,[rax]"), "{text}");
}

/// Each vCPU stores rdtsc, rdtsc, rdrand at its slot, then parks.
fn sampler(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(r8, GUEST_DATA.0)?;
    a.shl(rdi, 5)?;
    a.add(r8, rdi)?;
    for slot in 0..2 {
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.mov(qword_ptr(r8 + 8 * slot), rax)?;
    }
    a.rdrand(rcx)?;
    a.mov(qword_ptr(r8 + 16), rcx)?;
    a.setc(al)?;
    a.mov(byte_ptr(r8 + 24), al)?;
    park(a)
}

fn samples(seed: u64) -> Vec<u64> {
    let mut machine = machine_with(2, seed, sampler);
    machine.run(Instructions(50_000)).expect("runs");
    let mut bytes = vec![0u8; 64];
    machine
        .engine()
        .read_memory(Gpa(GUEST_DATA.0), &mut bytes)
        .expect("in range");
    bytes
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

#[test]
fn rdtsc_and_rdrand_come_from_the_seed() {
    let a = samples(5);
    assert_eq!(a, samples(5), "same seed, same values");
    assert_ne!(a[2], samples(6)[2], "rdrand follows the seed");
    for vcpu in 0..2 {
        let slot = &a[vcpu * 4..vcpu * 4 + 4];
        assert!(slot[1] > slot[0], "rdtsc increases: {slot:?}");
        assert!(
            slot[1] < 1_000_000,
            "rdtsc is guest time, not host TSC: {slot:?}"
        );
        assert_eq!(slot[3], 1, "rdrand sets CF");
    }
    assert_ne!(a[2], a[6], "each vCPU gets its own number");
}

#[test]
fn an_exception_without_a_handler_is_a_triple_fault() {
    let mut machine = machine_with(1, 1, |a| {
        a.xor(ecx, ecx)?;
        a.div(rcx)?;
        park(a)
    });
    let error = machine.run(Instructions(1_000)).expect_err("faults");
    let text = error.to_string();
    assert!(text.contains("TripleFault { vector: 0 }"), "{text}");
    assert!(text.contains("div rcx"), "{text}");
}
