//! Checkpoints across engines: a checkpoint taken on KVM restores on the
//! emulated engine and runs on to the state of an uninterrupted run, and
//! the other way round; KVM's delta checkpoints (its dirty log) bring an
//! emulated copy along exactly.

mod common;

use common::*;
use machine::guests::ledger_load::{LedgerConfig, LedgerLoad};
use machine::guests::{Guest, GuestImage};
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Checkpoint, Engine, Instructions, Kind, Machine, Shape, CHECKPOINT_BYTES_MAX};

fn one_vcpu() -> Shape {
    Shape::new(1, MEMORY_BYTES_MIN).expect("valid")
}

/// Through the encoded bytes, as a checkpoint travels.
fn take<E: Engine>(machine: &mut Machine<E>, kind: Kind) -> Checkpoint {
    let bytes = machine.checkpoint(kind).expect("checkpoint").encode();
    Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX).expect("decodes")
}

fn compute_image() -> GuestImage {
    Guest::Compute
        .image([40_000, 0, 0, 0, 0, 0, 0, 0])
        .expect("assembles")
}

#[test]
fn compute_checkpoint_moves_from_kvm_to_emulated_and_back() {
    if !kvm_or_skip("compute_checkpoint_moves_from_kvm_to_emulated_and_back") {
        return;
    }
    let image = compute_image();
    let mut reference = emu(one_vcpu(), &image, 1);
    run_to_idle(&mut reference, EMU_SLICE);
    let expected = final_state(&mut reference);

    // KVM runs part of the loop; the emulated engine finishes it.
    let mut on_kvm = kvm(one_vcpu(), &image);
    on_kvm.run(Instructions(2_000_000)).expect("runs");
    let checkpoint = take(&mut on_kvm, Kind::Full);
    let mut on_emu = emu(one_vcpu(), &image, 9);
    on_emu
        .restore(&checkpoint)
        .expect("restores KVM checkpoint");
    assert_eq!(
        on_emu.engine().now(),
        on_kvm.engine().now(),
        "guest time carries over"
    );
    run_to_idle(&mut on_emu, EMU_SLICE);
    assert_same(&final_state(&mut on_emu), &expected, "KVM -> emulated");

    // The emulated engine runs part of it; KVM finishes it.
    let mut on_emu = emu(one_vcpu(), &image, 3);
    on_emu.run(Instructions(100_000)).expect("runs");
    let checkpoint = take(&mut on_emu, Kind::Full);
    let mut on_kvm = kvm(one_vcpu(), &image);
    on_kvm
        .restore(&checkpoint)
        .expect("restores emulated checkpoint");
    run_to_idle(&mut on_kvm, KVM_SLICE);
    assert_same(&final_state(&mut on_kvm), &expected, "emulated -> KVM");
}

/// Serves `config` on `machine`; after `rounds_before` rounds it feeds one
/// more batch and runs only `partial` of guest time before returning, so
/// a checkpoint lands in the middle of requests.
fn serve_partly<E: Engine>(
    machine: &mut Machine<E>,
    load: &mut LedgerLoad,
    slice: Instructions,
    rounds_before: u32,
    partial: Instructions,
) {
    for _ in 0..rounds_before {
        load.feed(machine.bus());
        run_to_idle(machine, slice);
        load.drain(machine.bus());
    }
    load.feed(machine.bus());
    machine.run(partial).expect("runs");
}

fn finish<E: Engine>(machine: &mut Machine<E>, load: &mut LedgerLoad, slice: Instructions) {
    run_to_idle(machine, slice);
    load.drain(machine.bus());
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
fn ledger_checkpoint_mid_request_moves_between_engines() {
    if !kvm_or_skip("ledger_checkpoint_mid_request_moves_between_engines") {
        return;
    }
    let config = LedgerConfig::with_requests(200);
    let image = Guest::Ledger.image(config.params()).expect("assembles");
    let mut reference = emu(one_vcpu(), &image, 4);
    let mut reference_load = LedgerLoad::new(config, 11);
    finish(&mut reference, &mut reference_load, EMU_SLICE);
    let expected = final_state(&mut reference);

    let mut on_kvm = kvm(one_vcpu(), &image);
    let mut load = LedgerLoad::new(config, 11);
    serve_partly(&mut on_kvm, &mut load, KVM_SLICE, 4, Instructions(30_000));
    let checkpoint = take(&mut on_kvm, Kind::Full);
    let mut on_emu = emu(one_vcpu(), &image, 4);
    on_emu.restore(&checkpoint).expect("restores");
    finish(&mut on_emu, &mut load, EMU_SLICE);
    assert_eq!(load.replies(), reference_load.replies());
    assert_same(
        &final_state(&mut on_emu),
        &expected,
        "ledger KVM -> emulated",
    );

    let mut on_emu = emu(one_vcpu(), &image, 4);
    let mut load = LedgerLoad::new(config, 11);
    serve_partly(&mut on_emu, &mut load, EMU_SLICE, 4, Instructions(3_000));
    let checkpoint = take(&mut on_emu, Kind::Full);
    let mut on_kvm = kvm(one_vcpu(), &image);
    on_kvm.restore(&checkpoint).expect("restores");
    finish(&mut on_kvm, &mut load, KVM_SLICE);
    assert_eq!(load.replies(), reference_load.replies());
    assert_same(
        &final_state(&mut on_kvm),
        &expected,
        "ledger emulated -> KVM",
    );
}

#[test]
fn kvm_deltas_keep_an_emulated_backup_exact() {
    if !kvm_or_skip("kvm_deltas_keep_an_emulated_backup_exact") {
        return;
    }
    let config = LedgerConfig::with_requests(150);
    let image = Guest::Ledger.image(config.params()).expect("assembles");
    let mut primary = kvm(one_vcpu(), &image);
    let mut backup = emu(one_vcpu(), &image, 8);
    backup
        .restore(&take(&mut primary, Kind::Full))
        .expect("full checkpoint restores");
    let mut load = LedgerLoad::new(config, 21);
    let mut deltas = 0;
    while !load.done() {
        assert!(deltas < RUNS_MAX, "load not served");
        load.feed(primary.bus());
        primary.run(Instructions(2_000_000)).expect("runs");
        load.drain(primary.bus());
        // A host write into guest memory, which KVM's dirty log misses.
        let marker = u64::from(deltas).to_le_bytes();
        primary
            .engine_mut()
            .write_memory(machine::Gpa(0x3f_0000), &marker)
            .expect("in range");
        let delta = take(&mut primary, Kind::Delta);
        backup.restore(&delta).expect("delta applies");
        assert_same(
            &final_state(&mut backup),
            &final_state(&mut primary),
            "delta",
        );
        deltas += 1;
    }
    assert!(deltas > 3, "several deltas, got {deltas}");
}

#[test]
fn kvm_restores_its_whole_vcpu_state() {
    if !kvm_or_skip("kvm_restores_its_whole_vcpu_state") {
        return;
    }
    let config = LedgerConfig::with_requests(100);
    let image = Guest::Ledger.image(config.params()).expect("assembles");
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let mut first = kvm(shape, &image);
    let mut load = LedgerLoad::new(config, 2);
    for _ in 0..5 {
        load.step(&mut first, Instructions(1_000_000))
            .expect("runs");
    }
    let hash = first.state_hash().expect("hash");
    assert_eq!(
        first.state_hash().expect("hash"),
        hash,
        "a paused machine's hash is stable"
    );
    let checkpoint = take(&mut first, Kind::Full);
    let mut second = kvm(shape, &image);
    second.restore(&checkpoint).expect("restores");
    // Private state: time, full sregs, xsave, xcrs, debug registers,
    // MSRs, vCPU events, mp state, of every vCPU.
    assert_eq!(
        second.engine().save_engine_state(),
        first.engine().save_engine_state(),
        "every vCPU's KVM state comes back"
    );
    assert_eq!(second.state_hash().expect("hash"), hash);
}
