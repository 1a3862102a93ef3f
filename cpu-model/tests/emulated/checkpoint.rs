// Checkpoint/restore equivalence: checkpoint the ledger at a random
// instruction, restore into a fresh machine, run on; the final state hash
// equals the uninterrupted run's. Full and delta checkpoints, through
// their encoded bytes.

use std::collections::BTreeMap;

use cpu_model::{emulated_machine, EmuConfig, EmuEngine, Quantum};
use machine::devices::MemStore;
use machine::guests::ledger_load::{LedgerConfig, LedgerLoad};
use machine::guests::{Guest, GuestImage};
use machine::layout::MEMORY_BYTES_MIN;
use machine::rng::SplitMix64;
use machine::{Checkpoint, Instructions, Kind, Machine, Shape, CHECKPOINT_BYTES_MAX};

const SLICE: u64 = 20_000;
const SLICES: u64 = 30;
const REQUESTS: u64 = 2_000;
const POINTS: u64 = 60;
const SEEDS: u64 = 4;

struct Scenario {
    image: GuestImage,
    ledger: LedgerConfig,
    shape: Shape,
}

impl Scenario {
    fn new() -> Scenario {
        let ledger = LedgerConfig::with_requests(REQUESTS);
        Scenario {
            image: Guest::Ledger.image(ledger.params()).expect("assembles"),
            ledger,
            shape: Shape::new(4, MEMORY_BYTES_MIN).expect("valid"),
        }
    }

    fn boot(&self, seed: u64) -> Machine<EmuEngine> {
        let config = EmuConfig {
            seed,
            quantum: Quantum::default(),
        };
        let store = MemStore::new(REQUESTS / 16 + 16);
        emulated_machine(self.shape, &self.image, config, Box::new(store)).expect("boots")
    }

    /// Runs slices `from..SLICES` (the first one shortened by `skip`) and
    /// returns the final hash.
    fn finish(
        &self,
        machine: &mut Machine<EmuEngine>,
        load: &mut LedgerLoad,
        from: u64,
        skip: u64,
    ) -> u64 {
        machine.run(Instructions(SLICE - skip)).expect("runs");
        load.drain(machine.bus());
        for _ in from + 1..SLICES {
            load.step(machine, Instructions(SLICE)).expect("runs");
        }
        machine.state_hash().expect("hash")
    }

    /// Runs `slices` whole slices, then feeds and runs `partial` more.
    fn start(
        &self,
        machine: &mut Machine<EmuEngine>,
        load: &mut LedgerLoad,
        slices: u64,
        partial: u64,
    ) {
        for _ in 0..slices {
            load.step(machine, Instructions(SLICE)).expect("runs");
        }
        load.feed(machine.bus());
        machine.run(Instructions(partial)).expect("runs");
    }
}

fn through_bytes(checkpoint: &Checkpoint) -> Checkpoint {
    Checkpoint::decode(&checkpoint.encode(), CHECKPOINT_BYTES_MAX).expect("decodes")
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    Full,
    DeltaFromBoot,
    FullThenDelta { full_at: u64 },
}

#[test]
fn restore_at_random_instructions_gives_the_uninterrupted_final_state() {
    let scenario = Scenario::new();
    let mut reference = BTreeMap::new();
    for seed in 0..SEEDS {
        let mut machine = scenario.boot(seed);
        let mut load = LedgerLoad::new(scenario.ledger, seed);
        scenario.start(&mut machine, &mut load, 0, 0);
        reference.insert(seed, scenario.finish(&mut machine, &mut load, 0, 0));
    }
    let mut rng = SplitMix64::new(0xc0ffee);
    let mut kinds = BTreeMap::new();
    for point in 0..POINTS {
        let seed = point % SEEDS;
        let at = rng.range(2, SLICE * SLICES - 1);
        let plan = match point % 3 {
            0 => Plan::Full,
            1 => Plan::DeltaFromBoot,
            _ => Plan::FullThenDelta {
                full_at: rng.range(1, at - 1),
            },
        };
        *kinds
            .entry(format!("{plan:?}").split(' ').next().map(str::to_owned))
            .or_insert(0) += 1;
        let (original, restored) = interrupted(&scenario, seed, at, plan);
        assert_eq!(
            original, reference[&seed],
            "point {point}: checkpointing changed the run ({plan:?} at {at})"
        );
        assert_eq!(
            restored, reference[&seed],
            "point {point}: restored run differs ({plan:?} at {at}, seed {seed})"
        );
    }
    assert_eq!(kinds.len(), 3);
}

/// Final hashes of the checkpointed original and of the restored copy.
fn interrupted(scenario: &Scenario, seed: u64, at: u64, plan: Plan) -> (u64, u64) {
    let mut machine = scenario.boot(seed);
    let mut load = LedgerLoad::new(scenario.ledger, seed);
    let mut fresh = scenario.boot(seed);
    let mut done = 0;
    if let Plan::FullThenDelta { full_at } = plan {
        scenario.start(&mut machine, &mut load, full_at / SLICE, full_at % SLICE);
        let full = through_bytes(&machine.checkpoint(Kind::Full).expect("checkpoint"));
        fresh.restore(&full).expect("restores");
        done = full_at;
    }
    let (slices_done, partial_done) = (done / SLICE, done % SLICE);
    let (slices, partial) = (at / SLICE, at % SLICE);
    if done == 0 {
        scenario.start(&mut machine, &mut load, slices, partial);
    } else if slices == slices_done {
        machine
            .run(Instructions(partial - partial_done))
            .expect("runs");
    } else {
        machine
            .run(Instructions(SLICE - partial_done))
            .expect("runs");
        load.drain(machine.bus());
        scenario.start(&mut machine, &mut load, slices - slices_done - 1, partial);
    }
    let kind = match plan {
        Plan::Full => Kind::Full,
        _ => Kind::Delta,
    };
    let checkpoint = through_bytes(&machine.checkpoint(kind).expect("checkpoint"));
    fresh.restore(&checkpoint).expect("restores");
    let mut fresh_load = load.clone();
    let original = scenario.finish(&mut machine, &mut load, slices, partial);
    let restored = scenario.finish(&mut fresh, &mut fresh_load, slices, partial);
    (original, restored)
}

/// A backup that restores every delta the primary takes (a full one now
/// and then) follows the dirtier, which writes many pages and sleeps on
/// the clock: after the last checkpoint both run on to the final state of
/// an uninterrupted run.
#[test]
fn a_backup_applying_every_delta_follows_the_dirtier() {
    const TOTAL: u64 = 2_000_000;
    const EPOCHS: u64 = 16;
    let params = [24, 200, 50_000, 0, 0, 0, 0, 0];
    let image = Guest::Dirtier.image(params).expect("assembles");
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let boot = |seed: u64| {
        let config = EmuConfig {
            seed,
            quantum: Quantum::default(),
        };
        emulated_machine(shape, &image, config, Box::new(MemStore::new(1))).expect("boots")
    };
    for seed in 0..3 {
        let mut reference = boot(seed);
        reference.run(Instructions(TOTAL)).expect("runs");
        let expected = reference.state_hash().expect("hash");
        let mut rng = SplitMix64::new(seed);
        let mut cuts: Vec<u64> = (0..EPOCHS).map(|_| rng.range(1, TOTAL - 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let (mut primary, mut backup) = (boot(seed), boot(seed));
        let (mut at, mut delta_pages) = (0, 0);
        for (epoch, cut) in cuts.iter().enumerate() {
            primary.run(Instructions(cut - at)).expect("runs");
            at = *cut;
            let kind = if epoch % 5 == 4 {
                Kind::Full
            } else {
                Kind::Delta
            };
            let checkpoint = through_bytes(&primary.checkpoint(kind).expect("checkpoint"));
            if kind == Kind::Delta {
                delta_pages += checkpoint.pages.len();
            }
            backup.restore(&checkpoint).expect("restores");
        }
        assert_eq!(
            primary.state_hash().expect("hash"),
            backup.state_hash().expect("hash")
        );
        assert!(
            delta_pages > 200,
            "the dirtier dirtied only {delta_pages} pages"
        );
        primary.run(Instructions(TOTAL - at)).expect("runs");
        backup.run(Instructions(TOTAL - at)).expect("runs");
        assert_eq!(
            primary.state_hash().expect("hash"),
            expected,
            "seed {seed}: primary"
        );
        assert_eq!(
            backup.state_hash().expect("hash"),
            expected,
            "seed {seed}: backup"
        );
    }
}

/// Cutting a run into two `run` calls anywhere changes nothing, even when
/// a vCPU's wake deadline passes while it idles out its quantum (the
/// dirtier with a period shorter than a quantum).
#[test]
fn a_run_cut_anywhere_ends_the_same() {
    const TOTAL: u64 = 300_000;
    let image = Guest::Dirtier
        .image([1, 16, 300, 0, 0, 0, 0, 0])
        .expect("assembles");
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let boot = || {
        let config = EmuConfig {
            seed: 9,
            quantum: Quantum::default(),
        };
        emulated_machine(shape, &image, config, Box::new(MemStore::new(1))).expect("boots")
    };
    let mut whole = boot();
    whole.run(Instructions(TOTAL)).expect("runs");
    let expected = whole.state_hash().expect("hash");
    let mut rng = SplitMix64::new(4);
    for _ in 0..40 {
        let cut = rng.range(1, TOTAL - 1);
        let mut machine = boot();
        machine.run(Instructions(cut)).expect("runs");
        machine.run(Instructions(TOTAL - cut)).expect("runs");
        assert_eq!(
            machine.state_hash().expect("hash"),
            expected,
            "cut at {cut}"
        );
    }
}
