//! Backing host memory with pages ahead of use, off the caller's thread.

use std::thread::JoinHandle;

/// A thread that backs a range of host memory with pages
/// (`MADV_POPULATE_WRITE`: the kernel faults every page in writable and
/// keeps what it holds) while its owner goes on using the range. Dropping
/// it waits for the thread, so the owner drops it before it unmaps the
/// range. A kernel without `MADV_POPULATE_WRITE` (before Linux 5.14)
/// leaves the pages to be taken as they are touched, and says so once.
#[derive(Debug)]
pub struct Backing(Option<JoinHandle<()>>);

impl Backing {
    /// Starts backing `len` bytes at `addr`.
    ///
    /// # Safety
    /// `[addr, addr + len)` is one mapping of the caller's that stays
    /// mapped until the returned value is dropped.
    pub unsafe fn start(addr: *mut u8, len: usize) -> Backing {
        // The address crosses to the thread as a number: the thread never
        // reads or writes the bytes, only asks the kernel to back them.
        let addr = addr as usize;
        let spawned = std::thread::Builder::new()
            .name("memory-backing".into())
            .spawn(move || {
                // SAFETY: the range stays mapped until `Drop` has joined
                // this thread (the caller's promise). MADV_POPULATE_WRITE
                // changes no byte, so it races with no access to them.
                let rc = unsafe {
                    libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE)
                };
                if rc != 0 {
                    let why = std::io::Error::last_os_error();
                    tracing::warn!(%why, "memory not backed ahead: its pages come as touched");
                }
            });
        Backing(spawned.ok())
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            // The thread does not panic; had it, there is nothing to undo.
            let _ = thread.join();
        }
    }
}
