//! Whole-engine tests of the emulated machine, in one test binary so that
//! unicorn is linked once.

mod checkpoint;
mod delivery;
mod exceptions;
mod guests;
mod ledger;
mod longmode;
mod platform;
mod stall;
mod traps;
