//! Lockstep's runtime: the KVM engine (module [`kvm`]), which runs the
//! machine of the `machine` crate on hardware virtualization. All of the
//! crate's `unsafe` is in one module, `kvm::sys`.
#![deny(unsafe_code)]

pub mod kvm;
