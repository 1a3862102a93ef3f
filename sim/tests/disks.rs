//! Disk faults in whole runs: what each one does, and what catches it.

use machine::devices::Verify;
use sim::{run, DiskFault, Event, HostRef, RunSpec};

fn with_events(name: &str, seed: u64, events: Vec<(u64, Event)>) -> RunSpec {
    let mut spec = RunSpec::baseline(name, seed);
    spec.events = events;
    spec
}

fn torn_write_then_failover(seed: u64, verify: Verify) -> RunSpec {
    let mut spec = with_events(
        "torn-write-backup",
        seed,
        vec![
            (
                150,
                Event::Disk {
                    host: HostRef::Backup,
                    fault: DiskFault::TornWrite,
                    id: 0,
                },
            ),
            (
                300,
                Event::Crash {
                    host: HostRef::Primary,
                    id: 1,
                },
            ),
        ],
    );
    spec.disk_verify = verify;
    spec
}

#[test]
fn a_torn_write_on_the_backup_is_written_again_before_it_is_served() {
    for (seed, at) in [(1, 150), (2, 150), (3, 150), (1, 295), (2, 295), (3, 295)] {
        let mut spec = torn_write_then_failover(seed, Verify::ReadsAndWrites);
        spec.events[0].0 = at;
        let outcome = run(&spec, false);
        assert!(outcome.passed(), "seed {seed}: {:#?}", outcome.violations);
        assert_eq!(
            outcome.disk.torn_writes, 1,
            "seed {seed}: {:?}",
            outcome.disk
        );
        assert!(
            outcome.disk.write_retries >= 1,
            "seed {seed}: {:?}",
            outcome.disk
        );
        assert_eq!(outcome.failover_ms.len(), 1, "seed {seed}");
    }
}

#[test]
fn without_checksums_a_torn_standby_block_is_served_after_failover() {
    // The tear strikes the backup's last writes before the primary dies,
    // on a disk whose blocks are trusted: the promoted backup's journal
    // holds the torn record, and the oracle sees it.
    let caught = (1..=5).any(|seed| {
        let mut spec = torn_write_then_failover(seed, Verify::Off);
        spec.events[0].0 = 295;
        let outcome = run(&spec, false);
        assert_eq!(outcome.disk.torn_writes, 1, "seed {seed}");
        !outcome.passed()
    });
    assert!(caught, "a torn standby block must matter without checks");
}

/// The backup crashes at 150 ms and restarts with its disk at 260 ms,
/// with `more` events besides; the run must pass.
fn backup_restarts(name: &str, seed: u64, more: Vec<(u64, Event)>) -> sim::RunOutcome {
    let mut events = vec![
        (
            150,
            Event::Crash {
                host: HostRef::Backup,
                id: 0,
            },
        ),
        (260, Event::Restart(HostRef::Struck(0))),
    ];
    events.extend(more);
    events.sort_by_key(|(at, _)| *at);
    let outcome = run(&with_events(name, seed, events), true);
    assert!(outcome.passed(), "seed {seed}: {:#?}", outcome.violations);
    outcome
}

/// Whether a restarted host's scrub found its disk clean (`true`) or
/// not, as the trace says.
fn scrubbed(outcome: &sim::RunOutcome, clean: bool) -> bool {
    outcome
        .trace
        .iter()
        .any(|e| e.kind == sim::trace::Kind::Scrub { clean })
}

#[test]
fn a_restarted_backup_is_sent_only_the_blocks_its_disk_lacks() {
    for seed in 1..=3 {
        let outcome = backup_restarts("backup-crash-reprotect", seed, Vec::new());
        let disk = outcome.disk;
        assert!(scrubbed(&outcome, true), "seed {seed}: disk checked");
        assert!(disk.block_resyncs >= 1, "seed {seed}: {disk:?}");
        assert!(disk.copied_blocks < 1024, "seed {seed}: not all: {disk:?}");
    }
}

#[test]
fn a_restarted_disk_that_fails_its_scrub_is_copied_whole() {
    for seed in 1..=3 {
        // The crashed backup's disk (fault 0 struck it).
        let corrupt = Event::Disk {
            host: HostRef::Struck(0),
            fault: DiskFault::Corruption { rate: 1.0 },
            id: 1,
        };
        let outcome = backup_restarts(
            "backup-crash-bad-disk",
            seed,
            vec![(255, corrupt), (261, Event::DiskHeal(HostRef::Struck(1)))],
        );
        let disk = outcome.disk;
        assert!(scrubbed(&outcome, false), "seed {seed}");
        assert_eq!(disk.block_resyncs, 0, "seed {seed}: {disk:?}");
        assert!(disk.copied_blocks >= 1024, "seed {seed}: {disk:?}");
    }
}

#[test]
fn a_primary_crash_loses_its_unsynced_writes_and_no_acknowledged_transfer() {
    for seed in 1..=3 {
        let spec = with_events(
            "primary-crash-lost-unsynced",
            seed,
            vec![
                (
                    0,
                    Event::Disk {
                        host: HostRef::Primary,
                        fault: DiskFault::LostUnsyncedWrites,
                        id: 0,
                    },
                ),
                (
                    252,
                    Event::Crash {
                        host: HostRef::Primary,
                        id: 1,
                    },
                ),
                (400, Event::Restart(HostRef::Struck(1))),
            ],
        );
        let outcome = run(&spec, false);
        assert!(outcome.passed(), "seed {seed}: {:#?}", outcome.violations);
        assert!(
            outcome.disk.lost_writes >= 1,
            "seed {seed}: {:?}",
            outcome.disk
        );
    }
}

#[test]
fn a_slow_primary_disk_lengthens_its_pauses_and_loses_nothing() {
    let slow = |ms| Event::Disk {
        host: HostRef::Primary,
        fault: DiskFault::Latency { ms },
        id: 0,
    };
    let spec = with_events(
        "slow-disk-primary",
        1,
        vec![(100, slow(2)), (500, Event::DiskHeal(HostRef::Struck(0)))],
    );
    let outcome = run(&spec, false);
    assert!(outcome.passed(), "{:#?}", outcome.violations);
    assert_eq!(outcome.replies_received, 300);
    assert_eq!(outcome.capture_disk_ns.len(), outcome.capture_pages.len());
    let waited = outcome.capture_disk_ns.iter().filter(|ns| **ns > 0).count();
    assert!(waited > 10, "captures that read blocks waited: {waited}");
    assert!(
        outcome.capture_disk_ns.iter().all(|ns| ns % 2_000_000 == 0),
        "whole reads of 2 ms each"
    );
    let fast = run(&with_events("baseline", 1, Vec::new()), false);
    assert!(fast.capture_disk_ns.iter().all(|ns| *ns == 0));
}
