//! Lockstep's replication protocol: checkpoint replication with output
//! commit, a witness against split brain, failover and re-protection.
//!
//! The crate is a deterministic, sans-IO state machine in the manner of
//! quinn-proto: it reads no clock, draws no randomness and does no I/O.
//! Drivers (the simulator, the runtime daemon, the model checker) feed it
//! inputs with `handle_*(now, ...)` and carry out the [`Action`]s it yields.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod action;
mod config;
mod node;
mod stats;
mod types;
pub mod wire;
mod witness;

pub use action::{Action, Capture, DiskCopy, Grant};
#[cfg(feature = "mutants")]
pub use config::Mutant;
pub use config::{Config, ConfigError};
pub use node::{Assembling, Node, Protection, RoleKind, Start, COUNTER_MAX, ROUND_MAX};
pub use stats::Stats;
pub use types::{BlockIndex, CheckpointId, Digest, Epoch, Generation, Level, NodeId, Time};
pub use wire::{Codec, DecodeError, Envelope, Message};
pub use witness::Witness;
