//! Three deliberately broken protocols, each caught by the scenarios: the
//! oracle is only worth something if it fails when the protocol is wrong.
//! (The `mutants` feature of `protocol` exists for this test alone.)

use faults::scenario::{load_dir, Catalogue};
use protocol::{Config, Mutant};
use reports::Oracle;
use sim::{run, RunSpec};
use std::path::Path;

const SCENARIOS: [&str; 5] = [
    "primary-crash-mid-epoch",
    "primary-crash-delta-in-flight",
    "partition-witness-with-primary",
    "partition-witness-with-backup",
    "primary-paused-past-timeout",
];

fn catalogue() -> Catalogue {
    load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")).expect("scenarios load")
}

/// Runs the scenarios over a few seeds with `hook`; returns the violations'
/// oracles and a description of each failing run.
fn failures(hook: Option<fn(&mut Config)>) -> Vec<(String, Vec<Oracle>)> {
    let catalogue = catalogue();
    let mut failed = Vec::new();
    for name in SCENARIOS {
        for seed in 1..=3 {
            let mut spec: RunSpec =
                sim::scenario::resolve(&catalogue.scenarios[name], seed, None).expect("injectable");
            spec.config_hook = hook;
            let outcome = run(&spec, false);
            if !outcome.passed() {
                let oracles = outcome.violations.iter().map(|v| v.oracle).collect();
                failed.push((format!("{name} seed {seed}"), oracles));
            }
        }
    }
    failed
}

#[test]
fn the_correct_protocol_passes_these_scenarios() {
    assert_eq!(failures(None), Vec::<(String, Vec<Oracle>)>::new());
}

#[test]
fn no_generation_fence_is_caught() {
    let failed = failures(Some(|c| c.mutant = Some(Mutant::NoGenerationFence)));
    println!("no fence: {failed:?}");
    assert!(
        !failed.is_empty(),
        "a backup promoting itself without the witness went unnoticed"
    );
    assert!(
        failed
            .iter()
            .any(|(_, o)| o.contains(&Oracle::ONE_RELEASER) || o.contains(&Oracle::REPLIES)),
        "{failed:?}"
    );
}

#[test]
fn applying_an_incomplete_delta_is_caught() {
    let failed = failures(Some(|c| c.mutant = Some(Mutant::ApplyIncompleteDelta)));
    println!("incomplete: {failed:?}");
    assert!(
        !failed.is_empty(),
        "a backup applying incomplete deltas went unnoticed"
    );
}

#[test]
fn releasing_before_the_ack_is_caught() {
    let failed = failures(Some(|c| c.mutant = Some(Mutant::ReleaseBeforeAck)));
    println!("before ack: {failed:?}");
    assert!(
        !failed.is_empty(),
        "output released before its ack went unnoticed"
    );
    assert!(
        failed.iter().any(|(_, o)| o.contains(&Oracle::REPLIES)),
        "lost replies expected: {failed:?}"
    );
}
