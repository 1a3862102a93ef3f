//! End-to-end block integrity: a [`BlockStore`] layer that keeps a crc32c
//! of every block as it was meant to be written, checks each read against
//! it, re-reads a block that does not match (a flipped bit on the way), and
//! can read every write back and write it again until it lands whole (a
//! torn or dropped write). What no retry fixes is a [`StoreError::Corrupt`]:
//! to the node driver a failed disk, never a wrong block served as state.
//!
//! The checksum table lives beside the data, as a file system's block
//! pointers hold their children's checksums: a write that the disk lost or
//! tore no longer matches it, so [`IntegrityStore::scrub`] finds it after a
//! crash.

use super::disk::{BlockStore, StoreError, BLOCK_BYTES};

/// Reads of a block before a mismatch is taken as corruption.
pub const READ_ATTEMPTS: u32 = 3;
/// Writes of a block before a write that never reads back whole is taken as
/// a failed disk.
pub const WRITE_ATTEMPTS: u32 = 3;

/// Whether every write is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing is checked: the disk is trusted (one with end-to-end
    /// protection of its own), and tests measure what the checks catch.
    Off,
    /// Reads are checked; writes are trusted until read.
    Reads,
    /// Reads are checked and each write is read back and written again
    /// until it matches, so a torn write never stays behind silently.
    ReadsAndWrites,
}

/// What the layer caught.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntegrityStats {
    /// Reads that did not match and were read again.
    pub read_retries: u64,
    /// Writes that did not read back whole and were written again.
    pub write_retries: u64,
    /// Blocks given up on as corrupt (reads or scrubs).
    pub corrupt: u64,
}

/// A block store whose blocks carry checksums.
#[derive(Debug)]
pub struct IntegrityStore<S: BlockStore> {
    inner: S,
    sums: Vec<u32>,
    verify: Verify,
    stats: IntegrityStats,
}

impl<S: BlockStore> IntegrityStore<S> {
    /// Takes `inner` as it is now as correct: checksums every block.
    pub fn format(mut inner: S, verify: Verify) -> Result<IntegrityStore<S>, StoreError> {
        let mut sums = Vec::new();
        let mut buf = [0u8; BLOCK_BYTES];
        for block in 0..inner.block_count() {
            inner.read_block(block, &mut buf)?;
            sums.push(crc32c::crc32c(&buf));
        }
        Ok(IntegrityStore {
            inner,
            sums,
            verify,
            stats: IntegrityStats::default(),
        })
    }

    /// What was caught so far.
    pub fn stats(&self) -> IntegrityStats {
        self.stats
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The wrapped store, to arm faults on.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Reads every block and returns those that do not match their
    /// checksum however often they are read; an I/O error stops the scrub.
    pub fn scrub(&mut self) -> Result<Vec<u64>, StoreError> {
        let mut bad = Vec::new();
        let mut buf = [0u8; BLOCK_BYTES];
        for block in 0..self.block_count() {
            match self.read_block(block, &mut buf) {
                Ok(()) => {}
                Err(StoreError::Corrupt(b)) => bad.push(b),
                Err(e) => return Err(e),
            }
        }
        Ok(bad)
    }

    /// Reads `block` until it matches `sum`, at most [`READ_ATTEMPTS`]
    /// times; says whether it did.
    fn read_matching(
        &mut self,
        block: u64,
        sum: u32,
        buf: &mut [u8; BLOCK_BYTES],
    ) -> Result<bool, StoreError> {
        for attempt in 1..=READ_ATTEMPTS {
            self.inner.read_block(block, buf)?;
            if crc32c::crc32c(buf) == sum {
                return Ok(true);
            }
            if attempt < READ_ATTEMPTS {
                self.stats.read_retries += 1;
            }
        }
        Ok(false)
    }

    /// Where `block`'s checksum is kept, if the store has that block.
    fn index_of(&self, block: u64) -> Result<usize, StoreError> {
        usize::try_from(block)
            .ok()
            .filter(|&i| i < self.sums.len())
            .ok_or(StoreError::OutOfRange(block))
    }
}

impl<S: BlockStore> BlockStore for IntegrityStore<S> {
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }

    fn read_block(&mut self, block: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        let sum = self.sums[self.index_of(block)?];
        if self.verify == Verify::Off {
            return self.inner.read_block(block, buf);
        }
        if self.read_matching(block, sum, buf)? {
            return Ok(());
        }
        self.stats.corrupt += 1;
        Err(StoreError::Corrupt(block))
    }

    fn write_block(&mut self, block: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        let index = self.index_of(block)?;
        // The new sum first: a write that lands torn or not at all no
        // longer matches, whatever happens next.
        let sum = crc32c::crc32c(buf);
        self.sums[index] = sum;
        if self.verify != Verify::ReadsAndWrites {
            return self.inner.write_block(block, buf);
        }
        let mut back = [0u8; BLOCK_BYTES];
        for attempt in 1..=WRITE_ATTEMPTS {
            self.inner.write_block(block, buf)?;
            if self.read_matching(block, sum, &mut back)? {
                return Ok(());
            }
            if attempt < WRITE_ATTEMPTS {
                self.stats.write_retries += 1;
            }
        }
        self.stats.corrupt += 1;
        Err(StoreError::Corrupt(block))
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    fn take_busy_ns(&mut self) -> u64 {
        self.inner.take_busy_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::MemStore;

    /// A store that misbehaves on command: tears the next `tear` writes
    /// (only the first half lands) and flips a bit in the next `flip` reads.
    #[derive(Debug)]
    struct Flaky {
        inner: MemStore,
        tear: u32,
        flip: u32,
    }

    impl BlockStore for Flaky {
        fn block_count(&self) -> u64 {
            self.inner.block_count()
        }
        fn read_block(
            &mut self,
            block: u64,
            buf: &mut [u8; BLOCK_BYTES],
        ) -> Result<(), StoreError> {
            self.inner.read_block(block, buf)?;
            if self.flip > 0 {
                self.flip -= 1;
                buf[7] ^= 0x10;
            }
            Ok(())
        }
        fn write_block(&mut self, block: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), StoreError> {
            let mut data = *buf;
            if self.tear > 0 {
                self.tear -= 1;
                let mut old = [0u8; BLOCK_BYTES];
                self.inner.read_block(block, &mut old)?;
                data[BLOCK_BYTES / 2..].copy_from_slice(&old[BLOCK_BYTES / 2..]);
            }
            self.inner.write_block(block, &data)
        }
    }

    fn store(verify: Verify) -> IntegrityStore<Flaky> {
        let flaky = Flaky {
            inner: MemStore::new(8),
            tear: 0,
            flip: 0,
        };
        IntegrityStore::format(flaky, verify).unwrap()
    }

    fn block(fill: u8) -> [u8; BLOCK_BYTES] {
        [fill; BLOCK_BYTES]
    }

    #[test]
    fn a_transient_flip_is_read_again() {
        let mut s = store(Verify::Reads);
        s.write_block(3, &block(0xaa)).unwrap();
        s.inner_mut().flip = 2;
        let mut buf = [0u8; BLOCK_BYTES];
        s.read_block(3, &mut buf).unwrap();
        assert_eq!(buf, block(0xaa));
        assert_eq!(s.stats().read_retries, 2);
        s.inner_mut().flip = READ_ATTEMPTS;
        assert_eq!(s.read_block(3, &mut buf), Err(StoreError::Corrupt(3)));
        assert_eq!(s.stats().corrupt, 1);
    }

    #[test]
    fn a_torn_write_is_caught_by_the_next_read_or_at_once() {
        let mut trusting = store(Verify::Reads);
        trusting.inner_mut().tear = 1;
        trusting.write_block(5, &block(0x55)).unwrap();
        assert_eq!(trusting.scrub().unwrap(), vec![5]);

        let mut verifying = store(Verify::ReadsAndWrites);
        verifying.inner_mut().tear = 2;
        verifying.write_block(5, &block(0x55)).unwrap();
        assert_eq!(verifying.stats().write_retries, 2);
        assert_eq!(verifying.stats().corrupt, 0);
        assert!(verifying.scrub().unwrap().is_empty());
        let mut buf = [0u8; BLOCK_BYTES];
        verifying.read_block(5, &mut buf).unwrap();
        assert_eq!(buf, block(0x55));
    }

    #[test]
    fn a_write_that_never_lands_whole_fails() {
        let mut s = store(Verify::ReadsAndWrites);
        s.inner_mut().tear = WRITE_ATTEMPTS;
        assert_eq!(s.write_block(1, &block(9)), Err(StoreError::Corrupt(1)));
    }

    #[test]
    fn a_block_changed_behind_its_back_is_found_by_a_scrub() {
        let mut s = store(Verify::ReadsAndWrites);
        s.write_block(2, &block(1)).unwrap();
        s.write_block(6, &block(2)).unwrap();
        s.inner_mut().inner.write_block(6, &block(3)).unwrap();
        assert_eq!(s.scrub().unwrap(), vec![6]);
        let mut buf = [0u8; BLOCK_BYTES];
        assert_eq!(s.read_block(99, &mut buf), Err(StoreError::OutOfRange(99)));
        assert_eq!(s.write_block(8, &buf), Err(StoreError::OutOfRange(8)));
    }
}
