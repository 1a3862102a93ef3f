//! The guest-visible machine of Lockstep: memory map and boot state,
//! devices on port I/O, the PC platform (APICs, UART, RTC) for Linux guests,
//! the checkpoint format, the guest images, and the [`Engine`] trait that the emulated (`cpu-model`) and KVM (`runtime`)
//! engines implement. Nothing here reads the clock; the only I/O is the
//! file-backed guest disk (`devices::file`) a real host runs on.
#![forbid(unsafe_code)]

pub mod boot;
pub mod checkpoint;
pub mod codec;
pub mod devices;
pub mod engine;
#[cfg(test)]
mod fake;
pub mod guests;
pub mod layout;
pub mod linux;
pub mod machine;
pub mod paging;
pub mod pc;
pub mod rng;
pub mod units;
pub mod vcpu;
pub mod virtio;

pub use checkpoint::{Checkpoint, CheckpointRef, Kind, CHECKPOINT_BYTES_MAX};
pub use devices::DeviceBus;
pub use engine::{Engine, EngineEnvelope, EngineError, EngineStats, FaultKind, RunExit, RunWaker};
pub use layout::Shape;
pub use machine::{FullCapture, FullStream, Machine, MachineError};
pub use units::{Gpa, GuestNs, Instructions, PageIndex, Port, VcpuId, PAGE_SIZE};
pub use vcpu::{RunState, SystemRegisters, VcpuState};
