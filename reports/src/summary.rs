//! The summary a suite prints at its end.

use std::fmt;

use crate::{Oracle, RunResult};

/// Totals over a suite's runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Runs made.
    pub runs: u64,
    /// Runs with no violation.
    pub passed: u64,
    /// Runs with a violation.
    pub failed: u64,
    /// Wall time of the whole suite (runs go in parallel, so not their sum).
    pub wall_ms: u64,
    /// Simulated time of all runs together.
    pub sim_ms: u64,
    /// Runs per wall-clock minute.
    pub runs_per_minute: f64,
    /// Simulated time over wall time: how much faster than real time.
    pub sim_to_wall: f64,
    /// Violations found, by oracle: index 0 is oracle 1.
    pub violations: [u64; 5],
    /// Runs whose faults left no host with the VM's state.
    pub vm_lost: u64,
    /// Disk faults of all runs together.
    pub disk: crate::DiskFigures,
    /// Replay commands of the failed runs, in scenario and seed order.
    pub replays: Vec<String>,
}

impl Summary {
    /// The summary of `results`, which took `wall_ms` of wall time in all.
    pub fn of(results: &[RunResult], wall_ms: u64) -> Summary {
        let runs = results.len() as u64;
        let passed = results.iter().filter(|r| r.passed).count() as u64;
        let sim_ms: u64 = results.iter().map(|r| r.sim_ms).sum();
        let wall_min = wall_ms.max(1) as f64 / 60_000.0;
        let replays = crate::junit::group(results)
            .values()
            .flatten()
            .filter(|r| !r.passed)
            .map(|r| r.replay_command.clone())
            .collect();
        let mut violations = [0u64; 5];
        for v in results.iter().flat_map(|r| &r.violations) {
            violations[usize::from(v.oracle.number() - 1)] += 1;
        }
        Summary {
            runs,
            passed,
            failed: runs - passed,
            wall_ms,
            sim_ms,
            runs_per_minute: runs as f64 / wall_min,
            sim_to_wall: sim_ms as f64 / wall_ms.max(1) as f64,
            violations,
            vm_lost: results.iter().filter(|r| r.vm_lost).count() as u64,
            disk: results
                .iter()
                .fold(crate::DiskFigures::default(), |mut sum, r| {
                    sum += r.disk;
                    sum
                }),
            replays,
        }
    }

    /// Whether every run passed (and there was at least one).
    pub fn all_passed(&self) -> bool {
        self.runs > 0 && self.failed == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} runs: {} passed, {} failed in {:.1} s wall ({:.1} runs/min)",
            self.runs,
            self.passed,
            self.failed,
            self.wall_ms as f64 / 1000.0,
            self.runs_per_minute
        )?;
        writeln!(
            f,
            "simulated {:.1} s: {:.1}x wall time",
            self.sim_ms as f64 / 1000.0,
            self.sim_to_wall
        )?;
        for (i, count) in self.violations.iter().enumerate().filter(|(_, c)| **c > 0) {
            let oracle = Oracle::try_from(i as u8 + 1).expect("five oracles");
            writeln!(f, "{count} violations of {oracle}")?;
        }
        if self.vm_lost > 0 {
            writeln!(
                f,
                "{} runs lost the VM to more than one host failure (judged for replies and releases only)",
                self.vm_lost
            )?;
        }
        if self.disk.injected > 0 {
            writeln!(
                f,
                "disk faults: {} injected, {} repaired by checksum, {} blocks given up as corrupt; {} block-level resyncs",
                self.disk.injected, self.disk.repaired, self.disk.corrupt, self.disk.block_resyncs
            )?;
        }
        for replay in &self.replays {
            writeln!(f, "FAILED, replay with: {replay}")?;
        }
        Ok(())
    }
}
