//! Conformance: single-vCPU guests end in the same machine state on KVM
//! and on the emulated engine (memory, registers, devices, disk).

mod common;

use common::*;
use machine::guests::ledger_load::{check, LedgerConfig, LedgerLoad};
use machine::guests::{compute, Guest};
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Engine, Machine, Shape};

fn one_vcpu() -> Shape {
    Shape::new(1, MEMORY_BYTES_MIN).expect("valid")
}

#[test]
fn compute_ends_in_the_same_state() {
    if !kvm_or_skip("compute_ends_in_the_same_state") {
        return;
    }
    let iterations = 50_000;
    let image = Guest::Compute
        .image([iterations, 0, 0, 0, 0, 0, 0, 0])
        .expect("assembles");
    let mut on_kvm = kvm(one_vcpu(), &image);
    run_to_idle(&mut on_kvm, KVM_SLICE);
    let mut on_emu = emu(one_vcpu(), &image, 1);
    run_to_idle(&mut on_emu, EMU_SLICE);
    let expected = compute::expected(0, iterations);
    assert_eq!(on_kvm.bus().done()[0], Some(expected as u32));
    assert_same(
        &final_state(&mut on_kvm),
        &final_state(&mut on_emu),
        "compute",
    );
}

#[test]
fn echo_ends_in_the_same_state() {
    if !kvm_or_skip("echo_ends_in_the_same_state") {
        return;
    }
    let image = Guest::Echo.image([0; 8]).expect("assembles");
    let mut on_kvm = kvm(one_vcpu(), &image);
    let mut on_emu = emu(one_vcpu(), &image, 2);
    let packets: Vec<Vec<u8>> = (0..40u8).map(|i| (0..=i * 5).collect()).collect();
    for batch in packets.chunks(16) {
        for packet in batch {
            on_kvm.bus().nic.deliver(packet.clone()).expect("room");
            on_emu.bus().nic.deliver(packet.clone()).expect("room");
        }
        run_to_idle(&mut on_kvm, KVM_SLICE);
        run_to_idle(&mut on_emu, EMU_SLICE);
        let echoed = on_kvm.bus().nic.take_tx();
        assert_eq!(echoed, batch.to_vec(), "KVM echoes in order");
        assert_eq!(on_emu.bus().nic.take_tx(), echoed);
    }
    assert_same(&final_state(&mut on_kvm), &final_state(&mut on_emu), "echo");
}

/// Serves the whole load in rounds that each run to idle, so the request
/// sequence is the same on every engine.
pub fn serve<E: Engine>(
    machine: &mut Machine<E>,
    load: &mut LedgerLoad,
    slice: machine::Instructions,
) {
    for _ in 0..RUNS_MAX {
        if load.done() {
            return;
        }
        load.feed(machine.bus());
        run_to_idle(machine, slice);
        load.drain(machine.bus());
    }
    panic!("load not served");
}

#[test]
fn ledger_with_one_vcpu_ends_in_the_same_state() {
    if !kvm_or_skip("ledger_with_one_vcpu_ends_in_the_same_state") {
        return;
    }
    let config = LedgerConfig::with_requests(300);
    let image = Guest::Ledger.image(config.params()).expect("assembles");
    let mut on_kvm = kvm(one_vcpu(), &image);
    let mut kvm_load = LedgerLoad::new(config, 5);
    serve(&mut on_kvm, &mut kvm_load, KVM_SLICE);
    let mut on_emu = emu(one_vcpu(), &image, 5);
    let mut emu_load = LedgerLoad::new(config, 5);
    serve(&mut on_emu, &mut emu_load, EMU_SLICE);
    let report = check(&mut on_kvm, &kvm_load)
        .expect("reads")
        .expect("ledger invariants hold on KVM");
    assert_eq!(report.journal_records, 300);
    assert_eq!(kvm_load.replies(), emu_load.replies());
    assert_same(
        &final_state(&mut on_kvm),
        &final_state(&mut on_emu),
        "ledger",
    );
}
