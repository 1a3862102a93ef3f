// An injected vCPU stall: the stalled vCPU makes no progress for its
// duration of guest time, the others run on, and it resumes afterwards.

use cpu_model::{emulated_machine, Counting, EmuConfig, Quantum};
use machine::devices::MemStore;
use machine::guests::{compute, Guest};
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Instructions, Shape, VcpuId};

#[test]
fn a_stalled_vcpu_waits_out_its_stall_while_the_others_run() {
    let iterations = 20_000;
    let image = Guest::Compute
        .image([iterations, 0, 0, 0, 0, 0, 0, 0])
        .expect("assembles");
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let config = EmuConfig {
        seed: 3,
        quantum: Quantum::default(),
        counting: Counting::Precise,
    };
    let mut machine =
        emulated_machine(shape, &image, config, Box::new(MemStore::new(1))).expect("boots");
    let work_ns = iterations * compute::INSTRUCTIONS_PER_ITERATION;
    let stall_ns = 20 * work_ns;
    machine
        .engine_mut()
        .stall_vcpu(VcpuId(1), stall_ns)
        .expect("vCPU 1 exists");
    machine.run(Instructions(4 * work_ns)).expect("runs");
    let done = machine.bus().done().to_vec();
    assert!(
        done[0].is_some(),
        "vCPU 0 finished while vCPU 1 was stalled: {done:?}"
    );
    assert!(
        done[1].is_none(),
        "vCPU 1 made progress while stalled: {done:?}"
    );
    machine
        .run(Instructions(stall_ns + 4 * work_ns))
        .expect("runs");
    let done = machine.bus().done().to_vec();
    assert!(
        done[1].is_some(),
        "vCPU 1 resumed after its stall: {done:?}"
    );
    assert!(
        machine.engine_mut().stall_vcpu(VcpuId(7), 1).is_err(),
        "no vCPU 7"
    );
}
