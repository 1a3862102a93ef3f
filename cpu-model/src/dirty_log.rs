//! The dirty log of our unicorn patch (the DIRTY_LOG and DIRTY_BITMAP
//! pseudo-registers, documented in its include/unicorn/x86.h): each
//! instance keeps a bitmap of the guest-physical pages written since the
//! last fetch. QEMU's way under TCG: a TLB entry of a page not yet dirty
//! carries TLB_NOTDIRTY, so only the first store to the page after each
//! fetch takes the slow path that sets the bit; later stores run at full
//! speed. Unlike write-protection it changes no protection, so unicorn's
//! memory map never splits or rebuilds, and every store is seen, the page
//! walker's accessed/dirty bits included.
//!
//! Each vCPU is its own instance with its own TLB and log; the engine
//! takes the union at each checkpoint, with the pages written from the
//! host side (devices, restores), which no instance sees.

use std::ffi::{c_int, c_void};

use machine::PageIndex;
use unicorn_engine::unicorn_const::{uc_engine, uc_error};

use crate::hooks::Vcpu;
use crate::regs::pseudo;

extern "C" {
    // Part of unicorn 2.1's C API, not of its Rust binding: a register
    // read with the caller's buffer size (the bitmap is not 64 bits).
    fn uc_reg_read2(
        uc: *mut uc_engine,
        regid: c_int,
        value: *mut c_void,
        size: *mut usize,
    ) -> uc_error;
}

/// A bitmap of `pages` pages, one bit each, as the patch lays it out.
pub(crate) fn bitmap(pages: u32) -> Vec<u64> {
    vec![0; (pages as usize).div_ceil(64)]
}

/// Starts logging the writes to pages `0..pages` in `uc`, all clean.
pub(crate) fn start(uc: &mut Vcpu, pages: u32) -> Result<(), uc_error> {
    assert!(pages > 0, "a log of no pages is no log");
    uc.reg_write(pseudo::DIRTY_LOG, u64::from(pages))?;
    assert_eq!(
        uc.reg_read(pseudo::DIRTY_LOG)?,
        u64::from(pages),
        "the patch logs the pages asked for"
    );
    Ok(())
}

/// Adds the pages `uc` wrote since the last fetch to `words` (a
/// [`bitmap`] of the logged pages) and clears its log, so the next store
/// to each page is logged again.
pub(crate) fn fetch_into(uc: &mut Vcpu, words: &mut [u64]) -> Result<(), uc_error> {
    let mut fetched = vec![0u64; words.len()];
    let bytes = std::mem::size_of_val(fetched.as_slice());
    let mut size = bytes;
    // SAFETY: `uc` is a live instance; `fetched` is a writable buffer of
    // `size` bytes, and the patch writes at most `size` bytes (it fails
    // with OVERFLOW if its bitmap is larger) and stores its length back.
    let error = unsafe {
        uc_reg_read2(
            uc.get_handle(),
            pseudo::DIRTY_BITMAP,
            fetched.as_mut_ptr().cast(),
            &raw mut size,
        )
    };
    if error != uc_error::OK {
        return Err(error);
    }
    assert_eq!(size, bytes, "the log covers the pages it was started for");
    for (word, got) in words.iter_mut().zip(fetched) {
        *word |= got;
    }
    Ok(())
}

/// Drops `uc`'s translations of code in guest-physical page `page`, by
/// the patch's INVALIDATE: a page written where `uc` cannot see it (by a
/// device, or by another vCPU's instance). Not `ctl_remove_cache`, which
/// takes guest-virtual addresses and walks the current page tables.
pub(crate) fn drop_translations(uc: &mut Vcpu, page: u32) -> Result<(), uc_error> {
    uc.reg_write(pseudo::INVALIDATE, u64::from(page))
}

/// Sets page `page`'s bit in `words`.
pub(crate) fn set(words: &mut [u64], page: u32) {
    words[page as usize / 64] |= 1 << (page % 64);
}

/// The pages whose bits are set in `words`, in order.
pub(crate) fn pages(words: &[u64]) -> Vec<PageIndex> {
    let mut pages = Vec::new();
    for (w, &word) in words.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            pages.push(PageIndex(
                u32::try_from(w * 64).expect("at most 2^32 pages") + bit,
            ));
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_come_out_in_order_as_set() {
        let mut words = bitmap(130);
        assert_eq!(words.len(), 3);
        for page in [129, 0, 64, 63, 5] {
            set(&mut words, page);
        }
        let got: Vec<u32> = pages(&words).into_iter().map(|p| p.0).collect();
        assert_eq!(got, vec![0, 5, 63, 64, 129]);
    }
}
