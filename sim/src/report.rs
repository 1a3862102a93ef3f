//! A run's outcome as the reports crate records it.

use crate::run::RunOutcome;
use reports::{RunResult, TraceHash};

/// Guest pause per captured page, modelled: the emulated engine's capture
/// takes no simulated time, so pause figures are modelled from the pages a
/// delta carries (a fixed cost plus a copy per page, as measured on KVM),
/// plus the simulated time the capture's disk reads took.
pub const PAUSE_FIXED_NS: u64 = 20_000;
/// See [`PAUSE_FIXED_NS`].
pub const PAUSE_PER_PAGE_NS: u64 = 400;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The record of `outcome`, which took `wall_ms` of wall time.
pub fn to_result(outcome: &RunOutcome, wall_ms: u64) -> RunResult {
    let level = outcome.level;
    let mut pauses: Vec<u64> = outcome
        .capture_pages
        .iter()
        .zip(&outcome.capture_disk_ns)
        .map(|(pages, disk_ns)| PAUSE_FIXED_NS + pages * PAUSE_PER_PAGE_NS + disk_ns)
        .collect();
    pauses.sort_unstable();
    let d = outcome.disk;
    RunResult {
        scenario: outcome.scenario.clone(),
        seed: outcome.seed,
        level,
        passed: outcome.passed(),
        violations: outcome.violations.clone(),
        trace_hash: TraceHash(outcome.trace_hash),
        replay_command: reports::replay_command(&outcome.scenario, outcome.seed, level),
        sim_ms: outcome.sim_ms,
        wall_ms,
        failovers: u32::try_from(outcome.failover_ms.len()).expect("few failovers"),
        failover_ms: outcome.failover_ms.clone(),
        epochs: outcome.epochs,
        pause_ns_p50: percentile(&pauses, 0.5),
        pause_ns_p99: percentile(&pauses, 0.99),
        delta_bytes: outcome.shipped_bytes,
        requests_sent: outcome.requests_sent,
        replies_received: outcome.replies_received,
        vm_lost: outcome.vm_lost.is_some(),
        vm_lost_reason: outcome.vm_lost.clone(),
        disk: reports::DiskFigures {
            injected: d.eio + d.torn_writes + d.lost_writes + d.corrupted_reads,
            repaired: d.read_retries + d.write_retries,
            corrupt: d.corrupt,
            block_resyncs: d.block_resyncs,
        },
    }
}
