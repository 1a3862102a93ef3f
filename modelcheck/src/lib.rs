//! An exhaustive model of Lockstep's replication protocol, checked with
//! stateright. The model drives the real `protocol` state machines (two VM
//! hosts and the witness) over a network that loses, duplicates and
//! reorders messages, with host crashes and restarts, and a hostile peer
//! that spoils a chunk or forges a claim of a newer generation; only time
//! and the network are modelled.
//!
//! Safety properties (the simulator's oracle checks the same):
//! - S1: never two hosts releasing output in one generation;
//! - S2: every released output is covered by the checkpoint a later primary
//!   restores from (no released output is lost);
//! - S3: generations only grow on each host (across restarts too);
//! - S4: every host's generation is one the witness granted, though a
//!   hostile peer forges a heartbeat claiming one it did not;
//! - S5: a primary stops its guest only once the witness granted a newer
//!   generation than its own;
//! - the protocol's own assertions never fail.
//!
//! Liveness is checked on a fair variant ([`Bounds::fair`]): no loss, time
//! advances only once every message in flight is delivered, at most one
//! crash. There, a primary holding the witness's grant eventually releases
//! output it produced.
#![forbid(unsafe_code)]

mod model;

pub use model::{Bounds, Ghost, Host, LockstepModel, ModelAction, ModelState};

use stateright::{Checker, Expectation, Model};

/// The outcome of one property.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyResult {
    /// The property's name.
    pub name: &'static str,
    /// Whether a counterexample was found.
    pub violated: bool,
    /// The counterexample's actions, one per line, when violated.
    pub counterexample: Option<String>,
}

/// The outcome of a check.
#[derive(Clone, Debug)]
pub struct Report {
    /// Unique states explored.
    pub unique_states: usize,
    /// States generated, with repeats.
    pub states: usize,
    /// Deepest path explored.
    pub max_depth: usize,
    /// Every property.
    pub properties: Vec<PropertyResult>,
}

impl Report {
    /// Whether every property held.
    pub fn passed(&self) -> bool {
        self.properties.iter().all(|p| !p.violated)
    }
}

/// Checks `model` breadth first, to `depth` steps if given.
pub fn check(model: LockstepModel, depth: Option<usize>, threads: usize) -> Report {
    let names: Vec<(&'static str, bool)> = model
        .properties()
        .iter()
        .map(|p| (p.name, matches!(p.expectation, Expectation::Sometimes)))
        .collect();
    let mut builder = model.checker().threads(threads.max(1));
    if let Some(depth) = depth {
        builder = builder.target_max_depth(depth);
    }
    let checker = builder.spawn_bfs().join();
    let discoveries = checker.discoveries();
    let properties = names
        .into_iter()
        .map(|(name, sometimes)| {
            let found = discoveries.get(name);
            // A discovery is a counterexample, except for a `sometimes`
            // property, where it is the example sought.
            PropertyResult {
                name,
                violated: found.is_some() != sometimes,
                counterexample: found.filter(|_| !sometimes).map(|path| {
                    path.clone()
                        .into_actions()
                        .iter()
                        .enumerate()
                        .map(|(i, a)| format!("{:>3}. {a}", i + 1))
                        .collect::<Vec<_>>()
                        .join("\n")
                }),
            }
        })
        .collect();
    Report {
        unique_states: checker.unique_state_count(),
        states: checker.state_count(),
        max_depth: checker.max_depth(),
        properties,
    }
}
