//! Every `unsafe` block of the runtime: registering guest memory with KVM,
//! loading xsave state, and the vCPU kick (a signal whose handler sets
//! `immediate_exit` in the vCPU thread's own `kvm_run`).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

use kvm_bindings::{kvm_userspace_memory_region, kvm_xsave, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The signal that kicks a vCPU thread out of `KVM_RUN`: the first
/// real-time signal, as Firecracker uses.
pub(crate) fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// The `immediate_exit` byte of the `kvm_run` of the vCPU this thread
    /// runs; null on other threads.
    static IMMEDIATE_EXIT: Cell<*const AtomicU8> = const { Cell::new(std::ptr::null()) };
}

extern "C" fn on_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let byte = IMMEDIATE_EXIT.with(Cell::get);
    if !byte.is_null() {
        // SAFETY: `byte` was set by `bind_kick` on this very thread to the
        // `immediate_exit` field of a `kvm_run` mapping that the thread's
        // `VcpuFd` keeps alive until `unbind_kick` clears it; a u8 and an
        // AtomicU8 have the same layout, and the atomic store is
        // async-signal-safe.
        unsafe { (*byte).store(1, Ordering::SeqCst) };
    }
}

/// Installs the kick signal's handler once per process. Without
/// `SA_RESTART`, so a kicked `KVM_RUN` returns `EINTR`.
pub(crate) fn install_kick_handler() -> Result<(), std::io::Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Points this thread's kick at `vcpu`'s `immediate_exit`. The thread must
/// call [`unbind_kick`] before `vcpu` is dropped.
pub(crate) fn bind_kick(vcpu: &mut VcpuFd) {
    let byte: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    IMMEDIATE_EXIT.with(|cell| cell.set(byte.cast::<AtomicU8>().cast_const()));
}

/// Detaches this thread's kick from its vCPU.
pub(crate) fn unbind_kick() {
    IMMEDIATE_EXIT.with(|cell| cell.set(std::ptr::null()));
}

/// Registers all of `memory` (one region at guest address 0) as KVM slot 0
/// with dirty logging.
pub(crate) fn register_memory(
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    memory_bytes: u64,
) -> Result<(), kvm_ioctls::Error> {
    let host = memory
        .get_host_address(GuestAddress(0))
        .map_err(|_| kvm_ioctls::Error::new(libc::EFAULT))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        guest_phys_addr: 0,
        memory_size: memory_bytes,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` is the start of one anonymous mapping of
    // `memory_bytes` bytes owned by `memory`, which the engine keeps alive
    // (and never remaps) for as long as it keeps `vm`; the engine drops
    // its vCPUs and `vm` before `memory`.
    unsafe { vm.set_user_memory_region(region) }
}

/// Loads the legacy 4 KiB xsave area into a vCPU.
pub(crate) fn set_xsave(vcpu: &VcpuFd, xsave: &kvm_xsave) -> Result<(), kvm_ioctls::Error> {
    // SAFETY: `xsave` is a whole `kvm_xsave` (4 KiB region, no trailing
    // flexible array in use), which is what KVM_SET_XSAVE reads.
    unsafe { vcpu.set_xsave(xsave) }
}
