//! Guest RAM: one page-aligned host allocation that every unicorn instance
//! maps with `mem_map_ptr`, so all vCPUs see the same bytes.

use std::alloc::Layout;
use std::ptr::NonNull;

use std::sync::Arc;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::backing::Backing;

use machine::PAGE_SIZE;

/// The host buffer behind guest memory. Unicorn reads and writes it while
/// it emulates; the engine copies in and out of it only between runs (or
/// from a hook, with the emulator stopped inside it), all on one thread,
/// and never keeps a Rust reference into it.
#[derive(Debug)]
pub(crate) struct GuestRam {
    ptr: NonNull<u8>,
    layout: Layout,
    /// The thread backing the buffer with host pages, if one was started
    /// ([`GuestRam::back_in_background`]); joined before the buffer goes.
    backing: Option<Backing>,
}

impl GuestRam {
    /// A zeroed buffer of `bytes` bytes holding `initial` from its start
    /// (the rest zero: a machine a restore fills is given nothing to copy).
    pub(crate) fn new(bytes: usize, initial: &[u8]) -> GuestRam {
        let layout = Layout::from_size_align(bytes, PAGE_SIZE as usize)
            .expect("memory size is a checked multiple of the page size");
        assert!(layout.size() > 0);
        assert!(initial.len() <= bytes, "the initial image fits the memory");
        // A mapping of its own, not the allocator's: `alloc_zeroed` with a
        // page alignment writes every byte (it zeroes what it cannot know
        // is zero), and so takes a host page for every guest page at once.
        // A fresh anonymous mapping is page-aligned and zero, and takes a
        // page only where it is written.
        // SAFETY: a new private anonymous mapping; no existing memory is
        // named or changed.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let ptr = (raw != libc::MAP_FAILED)
            .then(|| NonNull::new(raw.cast::<u8>()))
            .flatten()
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut ram = GuestRam {
            ptr,
            layout,
            backing: None,
        };
        // The buffer is zero already, and a large one has no page of its
        // own until written: copy only the pages that are not zero, so
        // that a guest of hundreds of MiB costs its host the memory it
        // uses, not all of it at once (on a virtualised host each page
        // first touched costs microseconds).
        let page = PAGE_SIZE as usize;
        for (i, bytes) in initial.chunks(page).enumerate() {
            if bytes.iter().any(|b| *b != 0) {
                ram.write((i * page) as u64, bytes);
            }
        }
        ram
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.layout.size() as u64
    }

    /// Copies `buf.len()` bytes at `offset` out of guest memory.
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) {
        let end = offset.checked_add(buf.len() as u64).expect("no overflow");
        assert!(end <= self.len(), "read past guest memory");
        // SAFETY: the range is inside the allocation (asserted); the
        // emulator is not running (the engine is borrowed by this call's
        // caller), so nothing writes the bytes while they are copied.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset as usize),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
    }

    /// Copies `bytes` into guest memory at `offset`. Bytes already there
    /// are not written again: restoring a checkpoint onto a standby that
    /// holds most of it (or zero pages onto memory never touched) then
    /// costs a read, not a page of the host's for each page of the guest.
    pub(crate) fn write(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset.checked_add(bytes.len() as u64).expect("no overflow");
        assert!(end <= self.len(), "write past guest memory");
        // SAFETY: as in `read`: the range is inside the allocation, and
        // nothing writes it while this shared view lives (it ends here).
        let held = unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(offset as usize), bytes.len())
        };
        if held == bytes {
            return;
        }
        // SAFETY: as in `read`; `&mut self` and the stopped emulator mean
        // no one else touches the bytes meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset as usize),
                bytes.len(),
            );
        }
    }

    /// Backs the whole buffer with host pages on a thread of its own,
    /// while the emulator and the copies go on ([`Backing`]). Once only.
    pub(crate) fn back_in_background(&mut self) {
        if self.backing.is_none() {
            // SAFETY: the buffer is one allocation of ours, freed in
            // `Drop` only after the backing is dropped (and joined).
            self.backing = Some(unsafe { Backing::start(self.ptr.as_ptr(), self.layout.size()) });
        }
    }

    /// The pointer to hand to `mem_map_ptr`. It stays valid until this
    /// value is dropped; the engine drops its unicorn instances first.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

/// The guest RAM as vm-memory's mapping, for the virtio devices: their
/// writes set bits in its bitmap, one per page, which the engine takes
/// as dirty pages ([`crate::virtio`]).
#[derive(Debug)]
pub(crate) struct DeviceMemory {
    /// What the devices are handed.
    pub(crate) memory: machine::virtio::GuestMemory,
    /// The one region of it, whose bitmap records their writes.
    pub(crate) region: Arc<MmapRegion<AtomicBitmap>>,
}

impl GuestRam {
    /// vm-memory's view of this buffer (it does not own it: the engine
    /// drops it before the RAM).
    pub(crate) fn device_memory(&self) -> DeviceMemory {
        // SAFETY: `ptr` is the start of this buffer's live private
        // anonymous read-write mapping of `layout.size()` bytes, which
        // outlives the view (the engine declares it before the RAM). The
        // view does not unmap it (a raw region is not its owner).
        let region = unsafe {
            MmapRegion::<AtomicBitmap>::build_raw(
                self.ptr.as_ptr(),
                self.layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            )
        }
        .expect("a page-aligned mapping of ours");
        let region = Arc::new(region);
        let guest = GuestRegionMmap::with_arc(Arc::clone(&region), GuestAddress(0))
            .expect("memory ends below 1 GiB");
        let memory = GuestMemoryMmap::from_regions(vec![guest]).expect("one region");
        DeviceMemory { memory, region }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // Its madvise ends before the buffer is freed.
        drop(self.backing.take());
        // SAFETY: `ptr` is the mapping `new` made, of this length, and is
        // freed once; the unicorn instances that mapped it are gone (they
        // are declared before the RAM in `EmuEngine`, so dropped first).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.layout.size()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `ram` the kernel has backed (`mincore`).
    fn resident_pages(ram: &GuestRam) -> usize {
        let page = PAGE_SIZE as usize;
        let mut vec = vec![0u8; ram.layout.size().div_ceil(page)];
        // SAFETY: the range is the live allocation; `vec` has a byte per
        // page of it.
        let rc =
            unsafe { libc::mincore(ram.ptr.as_ptr().cast(), ram.layout.size(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 == 1).count()
    }

    #[test]
    fn backing_takes_every_page_and_changes_no_byte() {
        // 64 MiB: above the allocator's largest mmap threshold, so fresh
        // pages; two touched ones, even as huge pages, are few of it.
        let pages = 16_384;
        let mut initial = vec![0u8; pages * PAGE_SIZE as usize];
        initial[5 * PAGE_SIZE as usize + 7] = 0xAB;
        initial[1000 * PAGE_SIZE as usize] = 0xCD;
        let mut ram = GuestRam::new(initial.len(), &initial);
        assert!(
            resident_pages(&ram) < pages / 2,
            "a fresh buffer is not all backed: {} of {pages}",
            resident_pages(&ram)
        );
        ram.back_in_background();
        ram.back_in_background();
        drop(ram.backing.take()); // waits for the thread
        assert_eq!(resident_pages(&ram), pages);
        let mut read = vec![0u8; initial.len()];
        ram.read(0, &mut read);
        assert!(read == initial, "backing changed bytes");
    }

    #[test]
    fn a_short_initial_image_leaves_the_rest_zero_and_unbacked() {
        let pages = 16_384;
        let bytes = pages * PAGE_SIZE as usize;
        let ram = GuestRam::new(bytes, &[1, 2, 3]);
        assert_eq!(ram.len(), bytes as u64);
        let mut start = [9u8; 5];
        ram.read(0, &mut start);
        assert_eq!(start, [1, 2, 3, 0, 0]);
        let mut end = [9u8; 4];
        ram.read(bytes as u64 - 4, &mut end);
        assert_eq!(end, [0; 4]);
        assert!(
            resident_pages(&ram) < pages / 2,
            "{} of {pages} backed",
            resident_pages(&ram)
        );
    }
}
