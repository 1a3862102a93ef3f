// The ledger on the emulated engine: determinism, interleavings, and the
// invariant over many seeds.

use cpu_model::{emulated_machine, EmuConfig, EmuEngine, Quantum};
use machine::devices::MemStore;
use machine::guests::ledger_load::{check, LedgerConfig, LedgerLoad, LedgerReport};
use machine::guests::Guest;
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Instructions, Machine, Shape};

const SLICE: Instructions = Instructions(20_000);
const SLICES_MAX: u64 = 100_000;

fn run(vcpus: u16, seed: u64, requests: u64) -> (Machine<EmuEngine>, LedgerLoad) {
    let ledger = LedgerConfig::with_requests(requests);
    let image = Guest::Ledger.image(ledger.params()).expect("assembles");
    let shape = Shape::new(vcpus, MEMORY_BYTES_MIN).expect("valid");
    let config = EmuConfig {
        seed,
        quantum: Quantum::default(),
    };
    let store = MemStore::new(requests / 16 + 16);
    let mut machine = emulated_machine(shape, &image, config, Box::new(store)).expect("boots");
    let mut load = LedgerLoad::new(ledger, seed);
    let mut slices = 0;
    while !load.done() {
        load.step(&mut machine, SLICE).expect("runs");
        slices += 1;
        assert!(slices < SLICES_MAX, "seed {seed}: ledger stalled");
    }
    (machine, load)
}

fn checked(machine: &mut Machine<EmuEngine>, load: &LedgerLoad, seed: u64) -> LedgerReport {
    match check(machine, load).expect("readable") {
        Ok(report) => report,
        Err(violations) => panic!("seed {seed}: {violations:#?}"),
    }
}

#[test]
fn same_seed_same_final_state() {
    let (mut a, load_a) = run(4, 7, 300);
    let (mut b, load_b) = run(4, 7, 300);
    assert_eq!(a.state_hash().expect("hash"), b.state_hash().expect("hash"));
    assert_eq!(load_a.replies(), load_b.replies());
    let (mut c, _) = run(4, 8, 300);
    assert_ne!(a.state_hash().expect("hash"), c.state_hash().expect("hash"));
}

#[test]
fn other_seeds_interleave_differently_inside_the_critical_section() {
    let mut contention = Vec::new();
    for seed in 0..6 {
        let (mut machine, load) = run(4, seed, 400);
        let report = checked(&mut machine, &load, seed);
        contention.push(report.contended);
    }
    assert!(
        contention.iter().any(|c| c.iter().sum::<u64>() > 0),
        "no vCPU was ever preempted holding the lock: {contention:?}"
    );
    let first = &contention[0];
    assert!(
        contention.iter().any(|c| c != first),
        "every seed gave the same interleaving: {contention:?}"
    );
}

#[test]
fn ledger_invariant_holds_for_200_seeds() {
    for seed in 0..200 {
        let vcpus = 1 + (seed % 8) as u16;
        let (mut machine, load) = run(vcpus, seed, 60);
        let report = checked(&mut machine, &load, seed);
        assert_eq!(report.total_money, 16 * 1000);
        assert_eq!(load.served(), 60);
        assert_eq!(report.applied + report.refused, report.journal_records);
    }
}
