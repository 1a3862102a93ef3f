//! A faulty disk: a [`BlockStore`] wrapper that injects the catalogue's disk
//! faults (EIO, latency, torn writes, lost unsynced writes, silent
//! corruption), each drawn from a seed and counted, so that a test or the
//! simulator can tell what was injected and check it was caught.
//!
//! "Unsynced" means written since the last [`BlockStore::flush`]; a crash
//! may lose any of them. Latency is not slept: it is handed to the engine
//! and the driver as [`BlockStore::take_busy_ns`], for simulated time.

use std::collections::BTreeMap;

use machine::devices::{BlockStore, StoreError, BLOCK_BYTES};
use machine::rng::SplitMix64;

use crate::catalogue::{FaultKind, Rate};

/// A torn write lands whole granules of this many bytes. The machine's block
/// is a single 512-byte sector, so a tear "at a sector boundary" would tear
/// nothing; a power cut can still leave part of a sector written at the
/// drive's internal granule, and that is what we model.
pub const TORN_GRANULE_BYTES: usize = 64;
/// Most blocks tracked as unsynced; past this the store refuses writes
/// rather than grow without bound (the driver marks durable every epoch).
pub const UNSYNCED_BLOCKS_MAX: usize = 1 << 20;

/// Mixed into the seed so the disk's draws differ from the fault plan's.
const DISK_STREAM: u64 = 0x6469_736b_2d66_6c74; // "disk-flt"

/// When injected EIO strikes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eio {
    /// Each I/O fails with this probability.
    Rate(Rate),
    /// Every I/O fails once this many more writes have succeeded.
    AfterWrites(u64),
}

/// What the store injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// I/Os failed with EIO.
    pub eio: u64,
    /// Simulated milliseconds of added latency, not yet taken by the caller.
    pub latency_ms: u64,
    /// Writes torn.
    pub torn_writes: u64,
    /// Unsynced blocks reverted by a crash.
    pub lost_writes: u64,
    /// Reads returned with a flipped bit.
    pub corrupted_reads: u64,
}

/// The disk faults in force.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Armed {
    eio: Option<Eio>,
    writes_before_eio: u64,
    latency_ms: u64,
    torn_next_write: bool,
    lose_unsynced_on_crash: bool,
    corruption: Option<Rate>,
}

/// A block store with injected faults.
#[derive(Debug)]
pub struct FaultyStore<S: BlockStore> {
    inner: S,
    rng: SplitMix64,
    armed: Armed,
    injected: Injected,
    /// Old contents of each block written since the last durable point.
    unsynced: BTreeMap<u64, Box<[u8; BLOCK_BYTES]>>,
}

/// The fault is not one a disk injects.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0:?} is not a disk fault")]
pub struct NotADiskFault(pub crate::catalogue::KindName);

impl<S: BlockStore> FaultyStore<S> {
    /// Wraps `inner`, drawing from `seed`; no fault is armed.
    pub fn new(inner: S, seed: u64) -> FaultyStore<S> {
        FaultyStore {
            inner,
            rng: SplitMix64::new(seed ^ DISK_STREAM),
            armed: Armed::default(),
            injected: Injected::default(),
            unsynced: BTreeMap::new(),
        }
    }

    /// Arms a disk fault from the catalogue (its target is the caller's
    /// business); it stays armed until [`heal`](Self::heal).
    pub fn apply(&mut self, fault: &FaultKind) -> Result<(), NotADiskFault> {
        match fault {
            FaultKind::DiskEio {
                rate, after_writes, ..
            } => {
                self.armed.eio = match (rate, after_writes) {
                    (Some(rate), _) => Some(Eio::Rate(*rate)),
                    (None, Some(n)) => Some(Eio::AfterWrites(*n)),
                    (None, None) => Some(Eio::AfterWrites(0)),
                };
                self.armed.writes_before_eio = after_writes.unwrap_or(0);
            }
            FaultKind::DiskLatency { ms, .. } => self.armed.latency_ms = *ms,
            FaultKind::TornWrite { .. } => self.armed.torn_next_write = true,
            FaultKind::LostUnsyncedWrites { .. } => self.armed.lose_unsynced_on_crash = true,
            FaultKind::DiskCorruption { rate, .. } => self.armed.corruption = Some(*rate),
            other => return Err(NotADiskFault(other.name())),
        }
        Ok(())
    }

    /// Disarms every fault. What was injected stays injected.
    pub fn heal(&mut self) {
        self.armed = Armed::default();
    }

    /// The host crashed: with lost unsynced writes armed, each block written
    /// since the last durable point reverts to its old contents with
    /// probability one half (writes reach the platter in no promised order).
    /// Returns the reverted blocks.
    pub fn crash(&mut self) -> Result<Vec<u64>, StoreError> {
        let unsynced = std::mem::take(&mut self.unsynced);
        let mut lost = Vec::new();
        if !self.armed.lose_unsynced_on_crash {
            return Ok(lost);
        }
        for (block, old) in unsynced {
            if self.rng.next_u64() & 1 == 1 {
                self.inner.write_block(block, &old)?;
                self.injected.lost_writes += 1;
                lost.push(block);
            }
        }
        Ok(lost)
    }

    /// What was injected so far.
    pub fn injected(&self) -> Injected {
        self.injected
    }

    /// Takes the latency added since the last call, for the caller to
    /// advance simulated time by; nothing here sleeps.
    pub fn take_latency_ms(&mut self) -> u64 {
        std::mem::take(&mut self.injected.latency_ms)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Latency and EIO, common to reads and writes.
    fn before_io(&mut self, block: u64) -> Result<(), StoreError> {
        self.injected.latency_ms += self.armed.latency_ms;
        let fail = match self.armed.eio {
            None => false,
            Some(Eio::Rate(rate)) => unit(&mut self.rng) < rate.get(),
            Some(Eio::AfterWrites(_)) => self.armed.writes_before_eio == 0,
        };
        if fail {
            self.injected.eio += 1;
            return Err(StoreError::Io(format!("injected EIO on block {block}")));
        }
        Ok(())
    }
}

/// A number in `0.0..1.0` from 53 random bits.
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

impl<S: BlockStore> BlockStore for FaultyStore<S> {
    fn block_count(&self) -> u64 {
        self.inner.block_count()
    }

    fn read_block(&mut self, block: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        self.before_io(block)?;
        self.inner.read_block(block, buf)?;
        if let Some(rate) = self.armed.corruption {
            if unit(&mut self.rng) < rate.get() {
                let bit = self.rng.range(0, (BLOCK_BYTES * 8) as u64 - 1) as usize;
                buf[bit / 8] ^= 1 << (bit % 8);
                self.injected.corrupted_reads += 1;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.inner.flush()?;
        self.unsynced.clear();
        Ok(())
    }

    fn take_busy_ns(&mut self) -> u64 {
        self.take_latency_ms() * 1_000_000
    }

    fn write_block(&mut self, block: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        self.before_io(block)?;
        if block >= self.inner.block_count() {
            return Err(StoreError::OutOfRange(block));
        }
        let mut old = Box::new([0u8; BLOCK_BYTES]);
        self.inner.read_block(block, &mut old)?;
        if !self.unsynced.contains_key(&block) && self.unsynced.len() >= UNSYNCED_BLOCKS_MAX {
            return Err(StoreError::Io("too many unsynced blocks".into()));
        }
        let mut data = *buf;
        if self.armed.torn_next_write {
            let granules = BLOCK_BYTES / TORN_GRANULE_BYTES;
            let landed = self.rng.range(1, granules as u64 - 1) as usize * TORN_GRANULE_BYTES;
            data[landed..].copy_from_slice(&old[landed..]);
            // A tear whose lost part held the same bytes anyway tore
            // nothing: the fault waits for a write it changes.
            if data != *buf {
                self.armed.torn_next_write = false;
                self.injected.torn_writes += 1;
            }
        }
        self.inner.write_block(block, &data)?;
        self.unsynced.entry(block).or_insert(old);
        if let Some(Eio::AfterWrites(_)) = self.armed.eio {
            self.armed.writes_before_eio = self.armed.writes_before_eio.saturating_sub(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use machine::devices::MemStore;

    use super::*;
    use crate::catalogue::Target;

    const BLOCKS: u64 = 64;

    fn pattern(block: u64, round: u8) -> [u8; BLOCK_BYTES] {
        let mut buf = [0u8; BLOCK_BYTES];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (block as u8).wrapping_mul(31) ^ (i as u8) ^ round.wrapping_mul(97);
        }
        buf
    }

    fn store(seed: u64) -> FaultyStore<MemStore> {
        FaultyStore::new(MemStore::new(BLOCKS), seed)
    }

    fn write_all(s: &mut FaultyStore<MemStore>, round: u8) -> Vec<Result<(), StoreError>> {
        (0..BLOCKS)
            .map(|b| s.write_block(b, &pattern(b, round)))
            .collect()
    }

    fn read(s: &mut FaultyStore<MemStore>, block: u64) -> [u8; BLOCK_BYTES] {
        let mut buf = [0u8; BLOCK_BYTES];
        s.read_block(block, &mut buf).unwrap();
        buf
    }

    #[test]
    fn without_faults_it_is_the_inner_store() {
        let mut s = store(1);
        assert!(write_all(&mut s, 1).iter().all(Result::is_ok));
        for b in 0..BLOCKS {
            assert_eq!(read(&mut s, b), pattern(b, 1));
        }
        assert_eq!(s.injected(), Injected::default());
        assert!(s
            .apply(&FaultKind::NicFailure {
                target: Target::Primary
            })
            .is_err());
    }

    #[test]
    fn eio_after_writes_fails_every_io_past_the_count() {
        let mut s = store(2);
        s.apply(&FaultKind::DiskEio {
            target: Target::Primary,
            rate: None,
            after_writes: Some(5),
        })
        .unwrap();
        let results = write_all(&mut s, 1);
        assert!(results[..5].iter().all(Result::is_ok));
        assert!(results[5..]
            .iter()
            .all(|r| matches!(r, Err(StoreError::Io(_)))));
        assert_eq!(s.injected().eio, BLOCKS - 5);
        let mut buf = [0u8; BLOCK_BYTES];
        assert!(s.read_block(0, &mut buf).is_err());
        s.heal();
        assert_eq!(read(&mut s, 4), pattern(4, 1));
        assert_eq!(
            read(&mut s, 5),
            [0u8; BLOCK_BYTES],
            "the failed write did not land"
        );
    }

    #[test]
    fn eio_at_a_rate_is_seeded() {
        let run = |seed| {
            let mut s = store(seed);
            s.apply(&FaultKind::DiskEio {
                target: Target::Backup,
                rate: Rate::new(0.3),
                after_writes: None,
            })
            .unwrap();
            let failed: Vec<bool> = write_all(&mut s, 1).iter().map(Result::is_err).collect();
            (failed, s.injected().eio)
        };
        let (a, eio) = run(7);
        assert_eq!(run(7).0, a, "same seed, same failures");
        assert_ne!(run(8).0, a);
        assert!(eio > 5 && eio < 40, "{eio} of {BLOCKS} at 0.3");
    }

    #[test]
    fn latency_is_counted_not_slept() {
        let mut s = store(3);
        s.apply(&FaultKind::DiskLatency {
            target: Target::Primary,
            ms: 7,
        })
        .unwrap();
        write_all(&mut s, 1);
        read(&mut s, 0);
        assert_eq!(s.take_latency_ms(), 7 * (BLOCKS + 1));
        assert_eq!(s.take_latency_ms(), 0);
    }

    #[test]
    fn a_torn_write_lands_a_prefix_and_says_ok() {
        let mut s = store(4);
        write_all(&mut s, 1);
        s.apply(&FaultKind::TornWrite {
            target: Target::Backup,
        })
        .unwrap();
        assert!(s.write_block(9, &pattern(9, 2)).is_ok());
        assert!(s.write_block(10, &pattern(10, 2)).is_ok());
        assert_eq!(s.injected().torn_writes, 1, "only the next write tears");
        let torn = read(&mut s, 9);
        let (new, old) = (pattern(9, 2), pattern(9, 1));
        let landed = (0..BLOCK_BYTES).find(|&i| torn[i] != new[i]).unwrap();
        assert_eq!(landed % TORN_GRANULE_BYTES, 0);
        assert!(landed > 0);
        assert_eq!(torn[..landed], new[..landed]);
        assert_eq!(torn[landed..], old[landed..]);
        assert_eq!(read(&mut s, 10), pattern(10, 2));
    }

    #[test]
    fn a_crash_loses_some_unsynced_writes_and_no_durable_ones() {
        let mut s = store(5);
        s.apply(&FaultKind::LostUnsyncedWrites {
            target: Target::Primary,
        })
        .unwrap();
        write_all(&mut s, 1);
        s.flush().unwrap();
        write_all(&mut s, 2);
        let lost = s.crash().unwrap();
        assert!(
            !lost.is_empty() && lost.len() < BLOCKS as usize,
            "{}",
            lost.len()
        );
        assert_eq!(s.injected().lost_writes, lost.len() as u64);
        for b in 0..BLOCKS {
            let expected = if lost.contains(&b) {
                pattern(b, 1)
            } else {
                pattern(b, 2)
            };
            assert_eq!(read(&mut s, b), expected, "block {b}");
        }
        assert!(
            s.crash().unwrap().is_empty(),
            "nothing unsynced after a crash"
        );
    }

    #[test]
    fn without_the_fault_a_crash_loses_nothing() {
        let mut s = store(6);
        write_all(&mut s, 1);
        assert!(s.crash().unwrap().is_empty());
        assert_eq!(read(&mut s, 3), pattern(3, 1));
    }

    #[test]
    fn corruption_flips_one_bit_silently() {
        let mut s = store(7);
        write_all(&mut s, 1);
        s.apply(&FaultKind::DiskCorruption {
            target: Target::Backup,
            rate: Rate::new(0.5).unwrap(),
        })
        .unwrap();
        let mut flipped = 0;
        for b in 0..BLOCKS {
            let got = read(&mut s, b);
            let diff: u32 = got
                .iter()
                .zip(pattern(b, 1).iter())
                .map(|(x, y)| (x ^ y).count_ones())
                .sum();
            assert!(diff <= 1);
            flipped += u64::from(diff);
        }
        assert_eq!(flipped, s.injected().corrupted_reads);
        assert!(flipped > 10, "{flipped}");
        s.heal();
        assert_eq!(
            read(&mut s, 0),
            pattern(0, 1),
            "the stored bytes were never changed"
        );
    }
}
