//! Guest RAM: one page-aligned host allocation that every unicorn instance
//! maps with `mem_map_ptr`, so all vCPUs see the same bytes.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use machine::PAGE_SIZE;

/// The host buffer behind guest memory. Unicorn reads and writes it while
/// it emulates; the engine copies in and out of it only between runs (or
/// from a hook, with the emulator stopped inside it), all on one thread,
/// and never keeps a Rust reference into it.
#[derive(Debug)]
pub(crate) struct GuestRam {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl GuestRam {
    /// A zeroed buffer of `bytes` bytes holding `initial`.
    pub(crate) fn new(initial: &[u8]) -> GuestRam {
        let layout = Layout::from_size_align(initial.len(), PAGE_SIZE as usize)
            .expect("memory size is a checked multiple of the page size");
        assert!(layout.size() > 0);
        // SAFETY: the layout has a non-zero size (asserted above).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut ram = GuestRam { ptr, layout };
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

    /// The pointer to hand to `mem_map_ptr`. It stays valid until this
    /// value is dropped; the engine drops its unicorn instances first.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this `layout` and is
        // freed once; the unicorn instances that mapped it are gone (they
        // are declared before the RAM in `EmuEngine`, so dropped first).
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
