//! Lockstep's deterministic cluster simulator: two VM hosts running the
//! node driver on the emulated machine, a witness, a switch and clients as
//! turmoil hosts on one thread in simulated time; faults injected at the
//! boundaries the simulator owns; an oracle that judges every run; the same
//! seed, the same trace.
#![forbid(unsafe_code)]

pub mod client;
pub mod history;
pub mod hosts;
pub mod oracle;
pub mod report;
pub mod run;
pub mod scenario;
pub mod spec;
pub mod trace;
pub mod world;

pub use oracle::{Violation, ViolationKind};
pub use run::{run, run_catching, DiskCounts, RunOutcome};
pub use spec::{DiskFault, Endpoint, Event, HostRef, LinkFaultKind, RunSpec};
