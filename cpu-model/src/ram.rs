//! Guest RAM: one page-aligned host allocation that every unicorn instance
//! maps with `mem_map_ptr`, so all vCPUs see the same bytes.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use machine::PAGE_SIZE;

/// The host buffer behind guest memory. After the instances map it, it is
/// only ever read and written through unicorn (`mem_read`/`mem_write`), so
/// Rust never holds a reference into it while the emulator does.
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
        // SAFETY: `ptr` points to `layout.size()` freshly allocated bytes that
        // nothing else references yet, and `initial` has exactly that length.
        unsafe { std::ptr::copy_nonoverlapping(initial.as_ptr(), ptr.as_ptr(), initial.len()) };
        GuestRam { ptr, layout }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.layout.size() as u64
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
