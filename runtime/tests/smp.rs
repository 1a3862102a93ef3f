//! The SMP ledger on KVM: vCPU threads run truly in parallel; money is
//! conserved and every reply matches the journal, also across a KVM
//! checkpoint restored into a fresh KVM machine mid-load.

mod common;

use common::*;
use machine::guests::ledger_load::{check, LedgerConfig, LedgerLoad};
use machine::guests::Guest;
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Checkpoint, Instructions, Kind, Shape, CHECKPOINT_BYTES_MAX};

const REQUESTS: u64 = 64;
/// 10 ms of guest time per step: KVM here may be nested or emulated and
/// slow, and spinning vCPUs share two host cores.
const SLICE: Instructions = Instructions(10_000_000);

#[test]
fn smp_ledger_invariants_hold_on_kvm_across_a_restore() {
    if !kvm_or_skip("smp_ledger_invariants_hold_on_kvm_across_a_restore") {
        return;
    }
    let config = LedgerConfig::with_requests(REQUESTS);
    let image = Guest::Ledger.image(config.params()).expect("assembles");
    let shape = Shape::new(4, MEMORY_BYTES_MIN).expect("valid");
    let mut machine = kvm(shape, &image);
    let mut load = LedgerLoad::new(config, 31);
    let mut steps = 0;
    while load.served() < REQUESTS / 2 {
        assert!(steps < RUNS_MAX, "first half not served");
        load.step(&mut machine, SLICE).expect("runs");
        steps += 1;
    }
    // Checkpoint wherever the vCPUs are, maybe inside the critical
    // section: the invariants hold again once the load is served.
    let bytes = machine.checkpoint(Kind::Full).expect("checkpoint").encode();
    drop(machine);
    let checkpoint = Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX).expect("decodes");
    let mut machine = kvm(shape, &image);
    machine.restore(&checkpoint).expect("restores");
    while !load.done() {
        assert!(steps < 2 * RUNS_MAX, "load not served");
        load.step(&mut machine, SLICE).expect("runs");
        steps += 1;
    }
    run_to_idle(&mut machine, SLICE);
    let report = check(&mut machine, &load)
        .expect("reads")
        .expect("ledger invariants hold");
    assert_eq!(report.journal_records, REQUESTS);
    assert_eq!(report.total_money, config.accounts * config.initial_balance);
    eprintln!(
        "smp ledger on KVM: {report:?}, {:?}",
        machine.engine().kvm_stats()
    );
}

/// Four vCPUs computing independently, stopped by kicks again and again,
/// checkpointed mid-loop on KVM and finished on the emulated engine (and
/// on a fresh KVM machine): every vCPU's result is right and the final
/// state is the uninterrupted emulated run's, as no vCPU depends on the
/// interleaving.
#[test]
fn smp_compute_checkpoint_taken_mid_loop_finishes_anywhere() {
    if !kvm_or_skip("smp_compute_checkpoint_taken_mid_loop_finishes_anywhere") {
        return;
    }
    use machine::guests::compute;
    let iterations = 20_000;
    let image = Guest::Compute
        .image([iterations, 0, 0, 0, 0, 0, 0, 0])
        .expect("assembles");
    let shape = Shape::new(4, MEMORY_BYTES_MIN).expect("valid");
    let mut reference = emu(shape, &image, 6);
    run_to_idle(&mut reference, EMU_SLICE);
    let expected = final_state(&mut reference);

    let mut on_kvm = kvm(shape, &image);
    for _ in 0..3 {
        on_kvm.run(Instructions(200_000)).expect("runs");
    }
    let bytes = on_kvm.checkpoint(Kind::Full).expect("checkpoint").encode();
    let checkpoint = Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX).expect("decodes");
    let mid_loop = on_kvm.bus().done().iter().filter(|d| d.is_none()).count();
    assert!(mid_loop > 0, "the checkpoint is taken while vCPUs compute");

    let mut on_emu = emu(shape, &image, 7);
    on_emu.restore(&checkpoint).expect("restores");
    run_to_idle(&mut on_emu, EMU_SLICE);
    assert_same(
        &final_state(&mut on_emu),
        &expected,
        "SMP compute KVM -> emulated",
    );

    run_to_idle(&mut on_kvm, KVM_SLICE);
    let mut again = kvm(shape, &image);
    again.restore(&checkpoint).expect("restores");
    run_to_idle(&mut again, KVM_SLICE);
    for machine in [&mut on_kvm, &mut again] {
        for v in 0..4u16 {
            let result = compute::expected(v, iterations) as u32;
            assert_eq!(machine.bus().done()[usize::from(v)], Some(result));
        }
        assert_same(&final_state(machine), &expected, "SMP compute on KVM");
    }
}
