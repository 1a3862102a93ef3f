//! The platform's virtio devices ([`machine::virtio`]) on the emulated
//! engine. Their windows are unicorn MMIO into the device bus, like the
//! APIC pages (`platform.rs`); the engine serves them after every slice
//! (the queues its vCPU notified) and at every quantum start (a packet
//! that arrived meanwhile). Only at slice boundaries, so deterministic; a
//! request waits at most the rest of its slice. The slice does not stop
//! at the QueueNotify: `emu_stop` from an MMIO callback leaves rip at
//! the writing instruction, which the next slice would execute again.
//!
//! The devices write guest memory through vm-memory's mapping of the
//! engine's RAM ([`crate::ram::DeviceMemory`]), whose bitmap says which
//! pages they wrote: those are reported dirty to the checkpoint, as the
//! engine's own `write_memory` does, and what unicorn translated from
//! them is dropped (a module the guest read from disk is new code).

use machine::{EngineError, VcpuId};

use crate::backend;
use crate::dirty_log;
use crate::hooks::{mark_dirty, Shared, Vcpu};
use crate::ram::DeviceMemory;

/// Serves the virtio devices if they have work, on behalf of `vcpu` (the
/// store time of its requests is its wait); whether they had any.
pub(crate) fn serve(
    vcpus: &mut [Vcpu],
    shared: &Shared,
    memory: &DeviceMemory,
    vcpu: VcpuId,
) -> Result<bool, EngineError> {
    let disk_reads = |state: &crate::hooks::HookState| {
        state
            .bus
            .virtio()
            .map_or(0, |virtio| virtio.counts().disk_reads)
    };
    let (pages, read) = {
        let mut state = shared.borrow_mut();
        if !state.bus.virtio_wants_service() {
            return Ok(false);
        }
        let reads_before = disk_reads(&state);
        state.bus.service_virtio(&memory.memory, vcpu);
        let read = disk_reads(&state) != reads_before;
        let wait = state.bus.disk.take_busy_ns(usize::from(vcpu.0));
        state.disk_wait_ns = state.disk_wait_ns.saturating_add(wait);
        let pages = written_pages(memory);
        for &page in &pages {
            mark_dirty(&mut state, page);
        }
        (pages, read)
    };
    // Code translated from a page a disk read wrote is stale. Only a disk
    // read can bring code: what else the devices write (received frames,
    // used rings, status bytes) the guest never runs, and a page they
    // overwrite that still has translations is not run before a CPU store
    // (which unicorn's softmmu checks against its translations) or a disk
    // read gives it code again. Flushing for those too cost the Linux
    // ledger most of its serving time in retranslation. Only the pages
    // the read wrote, by our patch's INVALIDATE (guest-physical), not
    // every translation: the four flushes of all for the Linux boot's
    // disk reads cost it 38 k of its 158 k translations. Not
    // ctl_remove_cache: unicorn takes its range as guest-virtual and walks
    // the current page tables for it, and a walk that fails leaves a page
    // fault pending (CR2 the physical address) that the next run delivers
    // to the guest: a Linux process took it and the machine triple-faulted.
    if read {
        for uc in vcpus {
            for &page in &pages {
                dirty_log::drop_translations(uc, page).map_err(backend)?;
            }
        }
    }
    Ok(true)
}

/// The pages the devices wrote since the last call, in order.
fn written_pages(memory: &DeviceMemory) -> Vec<u32> {
    // vm-memory's bitmap is laid out as the dirty log's: bit p % 64 of
    // word p / 64 for page p.
    dirty_log::pages(&memory.region.bitmap().get_and_reset())
        .into_iter()
        .map(|page| page.0)
        .collect()
}
