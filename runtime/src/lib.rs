//! Lockstep's runtime: the node driver that joins the replication protocol
//! to a machine and its engine, and the KVM engine (module [`kvm`]). The
//! simulator drives the driver over turmoil with the emulated engine; the
//! daemon drives it over TCP with KVM. The driver itself does no I/O and
//! reads no clock: time comes in as `now`, frames and client packets come
//! in as bytes, and what must go out is polled. All of the crate's
//! `unsafe` is in two modules: `kvm::sys` (KVM) and `sys` (socket options).
#![deny(unsafe_code)]

#[forbid(unsafe_code)]
pub mod daemon;
#[forbid(unsafe_code)]
pub mod driver;
pub mod kvm;
mod sys;

pub use driver::{Effect, HostError, HostStats, Pace, Transmit, VmHost, WitnessHost};
