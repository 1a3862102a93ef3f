//! Whole-engine tests of the emulated machine, in one test binary so that
//! unicorn is linked once.

mod budget;
mod checkpoint;
mod delivery;
mod dirty;
mod exceptions;
mod exitreq;
mod guests;
mod ledger;
mod linux;
mod longmode;
mod platform;
mod smp;
mod stall;
mod traps;
mod virtio;

use cpu_model::EmuEngine;
use machine::{Engine, Gpa, Machine};

/// The little-endian u64 at `at` in a machine's guest memory.
pub fn read_u64(machine: &Machine<EmuEngine>, at: u64) -> u64 {
    let mut b = [0u8; 8];
    machine
        .engine()
        .read_memory(Gpa(at), &mut b)
        .expect("reads");
    u64::from_le_bytes(b)
}
