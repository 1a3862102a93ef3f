// The guests run on the emulated engine and do what they should.

use cpu_model::{emulated_machine, EmuConfig, Quantum};
use machine::devices::MemStore;
use machine::guests::{compute, Guest};
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Engine, Gpa, Instructions, RunExit, Shape};

fn config(seed: u64) -> EmuConfig {
    EmuConfig {
        seed,
        quantum: Quantum::default(),
    }
}

#[test]
fn compute_gives_the_checkable_result_on_every_vcpu() {
    let iterations = 20_000;
    let image = Guest::Compute
        .image([iterations, 0, 0, 0, 0, 0, 0, 0])
        .expect("assembles");
    let shape = Shape::new(3, MEMORY_BYTES_MIN).expect("valid");
    let mut machine =
        emulated_machine(shape, &image, config(1), Box::new(MemStore::new(8))).expect("boots");
    let budget = Instructions(3 * iterations * compute::INSTRUCTIONS_PER_ITERATION + 100_000);
    let exit = machine.run(budget).expect("runs");
    assert_eq!(exit, RunExit::Idle);
    for vcpu in 0..3u16 {
        let expected = compute::expected(vcpu, iterations);
        let mut bytes = [0u8; 8];
        machine
            .engine()
            .read_memory(Gpa(compute::RESULTS + 8 * u64::from(vcpu)), &mut bytes)
            .expect("in range");
        assert_eq!(u64::from_le_bytes(bytes), expected, "vCPU {vcpu}");
        assert_eq!(
            machine.bus().done()[usize::from(vcpu)],
            Some(expected as u32)
        );
    }
}

#[test]
fn echo_sends_packets_back() {
    let image = Guest::Echo.image([0; 8]).expect("assembles");
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let mut machine =
        emulated_machine(shape, &image, config(3), Box::new(MemStore::new(8))).expect("boots");
    let packets: Vec<Vec<u8>> = (0..10u8).map(|i| (0..=i * 3).collect()).collect();
    for packet in &packets {
        machine.bus().nic.deliver(packet.clone()).expect("room");
    }
    machine.run(Instructions(200_000)).expect("runs");
    let mut echoed = machine.bus().nic.take_tx();
    echoed.sort();
    let mut expected = packets.clone();
    expected.sort();
    assert_eq!(echoed, expected);
}
