//! The seeded scheduler: which vCPU runs next and for how many
//! instructions. Round-robin over runnable vCPUs, quantum lengths drawn
//! from a seeded PRNG. Its whole state is saved in checkpoints.

use machine::codec::{DecodeError, Reader, Writer};
use machine::rng::SplitMix64;

/// The shortest and longest quantum, in instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantum {
    /// Shortest quantum.
    pub min: u64,
    /// Longest quantum.
    pub max: u64,
}

impl Default for Quantum {
    fn default() -> Quantum {
        Quantum {
            min: 200,
            max: 5000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scheduler {
    rng: SplitMix64,
    quantum: Quantum,
    /// The vCPU holding the current quantum.
    pub current: u16,
    /// Instructions (or idle slots) left in the current quantum.
    pub remaining: u64,
}

impl Scheduler {
    pub(crate) fn new(seed: u64, quantum: Quantum) -> Scheduler {
        assert!(quantum.min >= 1 && quantum.min <= quantum.max);
        Scheduler {
            rng: SplitMix64::new(seed),
            quantum,
            current: 0,
            remaining: 0,
        }
    }

    /// Draws the quanta from `seed` from now on.
    pub(crate) fn reseed(&mut self, seed: u64) {
        self.rng = SplitMix64::new(seed);
    }

    /// Starts a quantum on the first runnable vCPU after the current one
    /// (round-robin). Returns whether that is a different vCPU, or None if
    /// no vCPU is runnable.
    pub(crate) fn next(&mut self, vcpus: u16, runnable: impl Fn(u16) -> bool) -> Option<bool> {
        let chosen = (1..=vcpus)
            .map(|step| (self.current + step) % vcpus)
            .find(|&v| runnable(v))?;
        let switched = chosen != self.current;
        self.current = chosen;
        self.remaining = self.rng.range(self.quantum.min, self.quantum.max);
        Some(switched)
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        w.u64(self.rng.state());
        w.u16(self.current);
        w.u64(self.remaining);
    }

    pub(crate) fn restore(&mut self, r: &mut Reader<'_>, vcpus: u16) -> Result<(), DecodeError> {
        let rng = SplitMix64::new(r.u64()?);
        let current = r.u16()?;
        if current >= vcpus {
            return Err(DecodeError::Invalid(format!("current vCPU {current}")));
        }
        self.rng = rng;
        self.current = current;
        self.remaining = r.u64()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_sleepers_and_draws_quanta_in_range() {
        let mut sched = Scheduler::new(7, Quantum { min: 10, max: 20 });
        assert_eq!(sched.next(3, |v| v != 1), Some(true));
        assert_eq!(sched.current, 2);
        assert!((10..=20).contains(&sched.remaining));
        assert_eq!(sched.next(3, |v| v != 1), Some(true));
        assert_eq!(sched.current, 0);
        assert_eq!(sched.next(3, |v| v == 0), Some(false));
        assert_eq!(sched.next(3, |_| false), None);
    }

    #[test]
    fn same_seed_same_quanta() {
        let mut a = Scheduler::new(1, Quantum::default());
        let mut b = Scheduler::new(1, Quantum::default());
        for _ in 0..100 {
            a.next(4, |_| true);
            b.next(4, |_| true);
            assert_eq!(a, b);
        }
    }
}
