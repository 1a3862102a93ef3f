//! A fault schedule as the simulator consumes it: each fault's beginning
//! and end as separate steps in time order, so a driver only ever has to
//! apply or undo one fault at one moment.

use crate::catalogue::{FaultKind, ScheduledFault};

/// Whether a step starts or ends its fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Undo the fault: heal the link, resume or restart the host, disarm
    /// the disk. Sorted first so that at one moment a heal comes before a
    /// new fault.
    End,
    /// Inject the fault.
    Begin,
}

/// One moment in a fault's life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step<'a> {
    /// Simulated milliseconds from the start of the run.
    pub at_ms: u64,
    /// Begin or end.
    pub phase: Phase,
    /// Index of the fault in the schedule, to pair a step with its other end.
    pub index: usize,
    /// The fault.
    pub fault: &'a FaultKind,
}

/// When a fault ends, if before the liveness phase: a crash ends when the
/// host restarts, a vCPU stall after its `ms`, anything else after its
/// `duration_ms`. Faults without an end are healed by the liveness phase.
pub fn end_ms(fault: &ScheduledFault) -> Option<u64> {
    let lasts_ms = match &fault.fault {
        FaultKind::Crash {
            restart_after_ms, ..
        } => *restart_after_ms,
        FaultKind::VcpuStall { ms, .. } => Some(*ms),
        _ => fault.duration_ms,
    };
    lasts_ms.map(|ms| fault.at_ms.saturating_add(ms))
}

/// The steps of a schedule, by time; at one moment ends come before
/// beginnings, and otherwise schedule order is kept.
pub fn timeline(faults: &[ScheduledFault]) -> Vec<Step<'_>> {
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(faults.len() * 2);
    for (index, fault) in faults.iter().enumerate() {
        steps.push(Step {
            at_ms: fault.at_ms,
            phase: Phase::Begin,
            index,
            fault: &fault.fault,
        });
        if let Some(at_ms) = end_ms(fault) {
            steps.push(Step {
                at_ms,
                phase: Phase::End,
                index,
                fault: &fault.fault,
            });
        }
    }
    steps.sort_by_key(|s| (s.at_ms, s.phase, s.index));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::Target;

    fn at(at_ms: u64, duration_ms: Option<u64>, fault: FaultKind) -> ScheduledFault {
        ScheduledFault {
            at_ms,
            at_latest_ms: None,
            duration_ms,
            fault,
        }
    }

    #[test]
    fn steps_pair_up_in_time_order() {
        let faults = vec![
            at(
                100,
                Some(50),
                FaultKind::Pause {
                    target: Target::Primary,
                },
            ),
            at(
                120,
                None,
                FaultKind::Crash {
                    target: Target::Backup,
                    restart_after_ms: Some(30),
                },
            ),
            at(
                150,
                None,
                FaultKind::Isolate {
                    target: Target::Witness,
                },
            ),
            at(
                10,
                None,
                FaultKind::VcpuStall {
                    target: Target::Primary,
                    vcpu: 0,
                    ms: 5,
                },
            ),
        ];
        let steps: Vec<(u64, Phase, usize)> = timeline(&faults)
            .iter()
            .map(|s| (s.at_ms, s.phase, s.index))
            .collect();
        assert_eq!(
            steps,
            vec![
                (10, Phase::Begin, 3),
                (15, Phase::End, 3),
                (100, Phase::Begin, 0),
                (120, Phase::Begin, 1),
                (150, Phase::End, 0),
                (150, Phase::End, 1),
                (150, Phase::Begin, 2),
            ]
        );
    }
}
