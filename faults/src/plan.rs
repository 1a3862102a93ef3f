//! Fault plans: a scripted list, or a swarm drawn by the seed. Swarm
//! testing (Groce et al.) lets the seed pick which kinds take part and at
//! what rates, not only when they fire, so that runs differ in their mix.

use machine::rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::catalogue::{ClientIndex, Direction, FaultKind, KindName, Rate, ScheduledFault, Target};

/// Most faults a swarm may draw in one run.
pub const SWARM_FAULTS_MAX: u32 = 64;

/// Mixed into the seed so that a fault plan's draws differ from other uses
/// of the same seed (the guest's scheduler, the network).
const PLAN_STREAM: u64 = 0x6661_756c_7473_2d31; // "faults-1"

/// A swarm: `faults` faults, of kinds drawn from `kinds` (all kinds when
/// empty), at times within the first `window_ms` of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Swarm {
    /// How many faults a run gets.
    pub faults: u32,
    /// The kinds the seed may choose from.
    #[serde(default)]
    pub kinds: Vec<KindName>,
    /// Faults fire within `0..window_ms`.
    pub window_ms: u64,
}

/// What goes wrong in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultPlan {
    /// These faults, at these times.
    Scripted(Vec<ScheduledFault>),
    /// Faults drawn by the seed.
    Swarm(Swarm),
}

/// What a plan needs to know of its scenario to draw faults that fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanBounds {
    /// Length of the safety phase.
    pub duration_ms: u64,
    /// vCPUs of the guest (a vCPU stall picks one).
    pub vcpus: u16,
    /// Clients of the workload.
    pub clients: u16,
}

impl FaultPlan {
    /// The faults of the run with this seed, sorted by time (ties keep file
    /// order). The same seed gives the same list on every machine.
    pub fn resolve(&self, seed: u64, bounds: PlanBounds) -> Vec<ScheduledFault> {
        let mut faults = match self {
            FaultPlan::Scripted(faults) => place(faults, seed),
            FaultPlan::Swarm(swarm) => swarm.draw(seed, bounds),
        };
        faults.sort_by_key(|f| f.at_ms);
        faults
    }
}

/// Mixed into the seed for the moments of scripted faults with a window.
const WINDOW_STREAM: u64 = 0x7769_6e64_6f77_2d31; // "window-1"

/// Scripted faults at their moments: the seed picks one within each
/// fault's window (every seed a different timeline), the others stay.
fn place(faults: &[ScheduledFault], seed: u64) -> Vec<ScheduledFault> {
    let mut rng = SplitMix64::new(seed ^ WINDOW_STREAM);
    faults
        .iter()
        .map(|fault| {
            let mut placed = fault.clone();
            if let Some(latest) = fault.at_latest_ms {
                assert!(fault.at_ms <= latest, "validated on load");
                placed.at_ms = rng.range(fault.at_ms, latest);
                placed.at_latest_ms = None;
            }
            placed
        })
        .collect()
}

/// Per-run choices of a swarm: which kinds, at which rates.
#[derive(Debug)]
struct Mix {
    kinds: Vec<KindName>,
    rate: Rate,
    delay_ms: u64,
}

impl Swarm {
    fn draw(&self, seed: u64, bounds: PlanBounds) -> Vec<ScheduledFault> {
        assert!(self.faults <= SWARM_FAULTS_MAX, "validated on load");
        let mut rng = SplitMix64::new(seed ^ PLAN_STREAM);
        let mix = self.mix(&mut rng);
        let window_ms = self.window_ms.min(bounds.duration_ms).max(1);
        (0..self.faults)
            .map(|_| {
                let kind = mix.kinds[pick(&mut rng, mix.kinds.len())];
                let at_ms = rng.range(0, window_ms - 1);
                // A crash lasts until its restart, a stall its `ms`.
                let own_length = matches!(kind, KindName::Crash | KindName::VcpuStall);
                let duration_ms = (!own_length).then(|| rng.range(1, window_ms));
                let fault = draw_fault(kind, &mix, &mut rng, bounds);
                ScheduledFault {
                    at_ms,
                    at_latest_ms: None,
                    duration_ms,
                    fault,
                }
            })
            .collect()
    }

    /// A non-empty subset of the allowed kinds, each kept with probability
    /// one half, and the rates this run uses.
    fn mix(&self, rng: &mut SplitMix64) -> Mix {
        let allowed: Vec<KindName> = if self.kinds.is_empty() {
            KindName::ALL.to_vec()
        } else {
            self.kinds.clone()
        };
        let mut kinds: Vec<KindName> = allowed
            .iter()
            .copied()
            .filter(|_| rng.next_u64() & 1 == 1)
            .collect();
        if kinds.is_empty() {
            kinds.push(allowed[pick(rng, allowed.len())]);
        }
        let rate = Rate::new(rng.range(1, 50) as f64 / 100.0).expect("within 0.01..=0.5");
        Mix {
            kinds,
            rate,
            delay_ms: rng.range(1, 200),
        }
    }
}

fn pick(rng: &mut SplitMix64, len: usize) -> usize {
    assert!(len > 0);
    usize::try_from(rng.range(0, len as u64 - 1)).expect("below len")
}

fn host(rng: &mut SplitMix64) -> Target {
    [Target::Primary, Target::Backup][pick(rng, 2)].clone()
}

fn any_node(rng: &mut SplitMix64) -> Target {
    [Target::Primary, Target::Backup, Target::Witness][pick(rng, 3)].clone()
}

fn link(rng: &mut SplitMix64, bounds: PlanBounds) -> [Target; 2] {
    let links = [
        [Target::Primary, Target::Backup],
        [Target::Primary, Target::Witness],
        [Target::Backup, Target::Witness],
    ];
    if bounds.clients > 0 && rng.range(0, 3) == 0 {
        let client = u16::try_from(rng.range(0, u64::from(bounds.clients) - 1)).expect("< clients");
        return [Target::Client(ClientIndex(client)), Target::Primary];
    }
    links[pick(rng, links.len())].clone()
}

fn draw_fault(kind: KindName, mix: &Mix, rng: &mut SplitMix64, bounds: PlanBounds) -> FaultKind {
    let rate = mix.rate;
    match kind {
        KindName::Crash => FaultKind::Crash {
            target: any_node(rng),
            restart_after_ms: (rng.next_u64() & 1 == 1).then(|| rng.range(1, 2_000)),
        },
        KindName::Pause => FaultKind::Pause { target: host(rng) },
        KindName::Partition => FaultKind::Partition {
            between: link(rng, bounds),
            direction: Direction::from(rng.next_u64() & 1 == 1),
        },
        KindName::Isolate => FaultKind::Isolate {
            target: any_node(rng),
        },
        KindName::Loss => FaultKind::Loss {
            between: link(rng, bounds),
            rate,
        },
        KindName::Delay => FaultKind::Delay {
            between: link(rng, bounds),
            ms: mix.delay_ms,
        },
        KindName::Duplicate => FaultKind::Duplicate {
            between: link(rng, bounds),
            rate,
        },
        KindName::Reorder => FaultKind::Reorder {
            between: link(rng, bounds),
        },
        KindName::Flap => FaultKind::Flap {
            between: link(rng, bounds),
            period_ms: rng.range(5, 500),
        },
        KindName::DiskEio => FaultKind::DiskEio {
            target: host(rng),
            rate: Some(rate),
            after_writes: None,
        },
        KindName::DiskLatency => FaultKind::DiskLatency {
            target: host(rng),
            ms: mix.delay_ms,
        },
        KindName::TornWrite => FaultKind::TornWrite { target: host(rng) },
        KindName::LostUnsyncedWrites => FaultKind::LostUnsyncedWrites { target: host(rng) },
        KindName::DiskCorruption => FaultKind::DiskCorruption {
            target: host(rng),
            rate,
        },
        KindName::NicFailure => FaultKind::NicFailure { target: host(rng) },
        KindName::VcpuStall => FaultKind::VcpuStall {
            target: host(rng),
            vcpu: u16::try_from(rng.range(0, u64::from(bounds.vcpus.max(1)) - 1)).expect("< vcpus"),
            ms: rng.range(1, 1_000),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: PlanBounds = PlanBounds {
        duration_ms: 5_000,
        vcpus: 2,
        clients: 2,
    };

    fn swarm(kinds: Vec<KindName>) -> FaultPlan {
        FaultPlan::Swarm(Swarm {
            faults: 6,
            kinds,
            window_ms: 4_000,
        })
    }

    #[test]
    fn same_seed_same_faults() {
        let plan = swarm(vec![]);
        for seed in 0..50 {
            assert_eq!(plan.resolve(seed, BOUNDS), plan.resolve(seed, BOUNDS));
        }
    }

    #[test]
    fn seeds_differ_in_mix_and_times() {
        let plan = swarm(vec![]);
        let a = plan.resolve(1, BOUNDS);
        let b = plan.resolve(2, BOUNDS);
        assert_ne!(a, b);
        let mixes: std::collections::BTreeSet<Vec<KindName>> = (0..40)
            .map(|seed| {
                let mut kinds: Vec<KindName> = plan
                    .resolve(seed, BOUNDS)
                    .iter()
                    .map(|f| f.fault.name())
                    .collect();
                kinds.sort();
                kinds.dedup();
                kinds
            })
            .collect();
        assert!(mixes.len() > 10, "the seed picks the mix: {}", mixes.len());
    }

    #[test]
    fn swarm_faults_are_sorted_within_window_and_of_allowed_kinds() {
        let allowed = vec![KindName::Crash, KindName::Loss, KindName::VcpuStall];
        let plan = swarm(allowed.clone());
        for seed in 0..200 {
            let faults = plan.resolve(seed, BOUNDS);
            assert_eq!(faults.len(), 6);
            assert!(faults.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            for f in &faults {
                assert!(f.at_ms < 4_000);
                assert!(allowed.contains(&f.fault.name()));
                if let FaultKind::VcpuStall { vcpu, .. } = f.fault {
                    assert!(vcpu < BOUNDS.vcpus);
                }
                let own_length = matches!(f.fault.name(), KindName::Crash | KindName::VcpuStall);
                assert_eq!(f.duration_ms.is_none(), own_length, "{f:?}");
            }
        }
    }

    #[test]
    fn drawn_faults_write_and_read_back_as_scenario_toml() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct File {
            faults: Vec<ScheduledFault>,
        }
        for seed in 0..50 {
            let file = File {
                faults: swarm(vec![]).resolve(seed, BOUNDS),
            };
            let text = toml::to_string(&file).unwrap();
            let back: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, file);
        }
    }

    #[test]
    fn scripted_plans_are_sorted_stably() {
        let crash = |at_ms, target| ScheduledFault {
            at_ms,
            at_latest_ms: None,
            duration_ms: None,
            fault: FaultKind::Crash {
                target,
                restart_after_ms: None,
            },
        };
        let plan = FaultPlan::Scripted(vec![
            crash(300, Target::Backup),
            crash(100, Target::Primary),
            crash(300, Target::Witness),
        ]);
        let faults = plan.resolve(7, BOUNDS);
        let order: Vec<u64> = faults.iter().map(|f| f.at_ms).collect();
        assert_eq!(order, vec![100, 300, 300]);
        assert_eq!(faults[1].fault.targets(), vec![&Target::Backup]);
    }
}
