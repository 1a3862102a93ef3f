//! Reassembly of a delta or copy round from its chunks, and the splitting
//! that produces them.
//!
//! A round of a large guest is hundreds of MiB: its bytes are copied once
//! on each side and hashed once, a chunk at a time. The sender keeps one
//! buffer and sends slices of it; the receiver appends the chunks that
//! arrive in order to one buffer, hashing as it goes, so the chunk that
//! completes a transfer costs no more than any other.

use crate::action::Capture;
use crate::types::Digest;
use crate::wire::Chunk;
use bytes::Bytes;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Chunks received so far of one transfer. Complete only when every index
/// in `0..count` arrived and their bytes have the transfer's digest; an
/// incomplete transfer is never handed out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Assembly {
    count: u32,
    digest: Digest,
    /// Chunks `0..ends.len()`, in order, one after the other.
    prefix: Vec<u8>,
    /// Where each chunk of `prefix` ends.
    ends: Vec<usize>,
    /// The digest of `prefix` so far.
    hashed: Running,
    /// Chunks received past the first missing one.
    later: BTreeMap<u32, Bytes>,
    bytes: u64,
}

/// A SHA-256 under way over an assembly's prefix. It is a function of the
/// prefix, so it takes no part in comparing or hashing assemblies.
#[derive(Clone, Default)]
struct Running(sha2::Sha256);

impl PartialEq for Running {
    fn eq(&self, _: &Running) -> bool {
        true
    }
}

impl Eq for Running {}

impl Hash for Running {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Running")
    }
}

/// A chunk that does not fit the transfer it claims to belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AssemblyError {
    /// The chunk count or the transfer's digest differs from the first
    /// chunk's.
    CountMismatch,
    /// A chunk of the same index with other bytes.
    DataMismatch,
    /// The transfer would exceed the size limit.
    TooLarge,
}

/// What became of a chunk offered to an assembly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Added (or a duplicate of one held).
    Added,
    /// It disagreed with the chunks held: they were dropped and the
    /// assembly starts over from this one.
    Replaced,
    /// Refused: it alone exceeds the size limit.
    Refused,
    /// It completed the count, but the bytes assembled do not have the
    /// transfer's digest (a chunk of other content with the right count
    /// and digest was among them): all were dropped, the sender's
    /// retransmission assembles it again.
    Spoiled,
}

impl Assembly {
    pub(crate) fn new(count: u32, digest: Digest) -> Assembly {
        assert!(count > 0, "a transfer has at least one chunk");
        Assembly {
            count,
            digest,
            prefix: Vec::new(),
            ends: Vec::new(),
            hashed: Running::default(),
            later: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// The bytes held at `index`, if any.
    fn held(&self, index: u32) -> Option<&[u8]> {
        let i = index as usize;
        if let Some(&end) = self.ends.get(i) {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            return Some(&self.prefix[start..end]);
        }
        self.later.get(&index).map(|b| &b[..])
    }

    /// Adds a chunk; a duplicate of one already held is ignored.
    pub(crate) fn add(&mut self, chunk: Chunk, bytes_max: u64) -> Result<(), AssemblyError> {
        if chunk.count != self.count || chunk.digest != self.digest || chunk.index >= self.count {
            return Err(AssemblyError::CountMismatch);
        }
        if let Some(held) = self.held(chunk.index) {
            if held != &chunk.data[..] {
                return Err(AssemblyError::DataMismatch);
            }
            return Ok(());
        }
        let bytes = self.bytes + chunk.data.len() as u64;
        if bytes > bytes_max {
            return Err(AssemblyError::TooLarge);
        }
        self.bytes = bytes;
        if self.prefix.capacity() == 0 {
            // Room for the whole, as the first chunk's size tells it: the
            // pages are taken as the chunks fill them.
            let whole = (chunk.data.len() as u64).saturating_mul(u64::from(self.count));
            let room = usize::try_from(whole.min(bytes_max)).expect("the limit fits in memory");
            self.prefix.reserve_exact(room);
        }
        self.later.insert(chunk.index, chunk.data);
        self.take_in_order();
        assert!(
            self.chunks() <= self.count as usize,
            "indices are below count"
        );
        Ok(())
    }

    /// Adds a chunk to the transfer, or starts the transfer over from it if
    /// it contradicts what is held (another count or digest, other bytes
    /// at its index, or more bytes than the limit): a forged or stale chunk
    /// may spoil an assembly, but the sender's next consistent
    /// retransmission always completes it. The chunk that completes the
    /// count has the whole checked against the digest: bytes without it
    /// are dropped, never handed out.
    pub(crate) fn offer(&mut self, chunk: Chunk, bytes_max: u64) -> Offered {
        if chunk.data.len() as u64 > bytes_max {
            return Offered::Refused;
        }
        let offered = match self.add(chunk.clone(), bytes_max) {
            Ok(()) => Offered::Added,
            Err(_) => {
                *self = Assembly::new(chunk.count, chunk.digest);
                self.add(chunk, bytes_max)
                    .expect("a chunk within the limit starts a transfer");
                Offered::Replaced
            }
        };
        if self.is_complete() && self.assembled() != self.digest {
            *self = Assembly::new(self.count, self.digest);
            return Offered::Spoiled;
        }
        offered
    }

    /// The digest of the chunks held in order.
    fn assembled(&self) -> Digest {
        Digest(self.hashed.0.clone().finalize().into())
    }

    /// Chunks held.
    pub(crate) fn chunks(&self) -> usize {
        self.ends.len() + self.later.len()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The broken variant: fills missing chunks with nothing.
    #[cfg(feature = "mutants")]
    pub(crate) fn pretend_complete(&mut self) {
        for index in 0..self.count {
            if self.held(index).is_none() {
                self.later.insert(index, Bytes::new());
            }
        }
        self.take_in_order();
    }

    /// Moves the chunks that now follow the prefix onto it, hashing them.
    fn take_in_order(&mut self) {
        while let Some(next) = self.later.remove(&(self.ends.len() as u32)) {
            self.hashed.0.update(&next);
            self.prefix.extend_from_slice(&next);
            self.ends.push(self.prefix.len());
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.ends.len() == self.count as usize
    }

    /// The transfer's digest.
    pub(crate) fn digest(&self) -> Digest {
        self.digest
    }

    /// The whole transfer; only once complete (and so checked against its
    /// digest by `offer`).
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        assert!(self.is_complete(), "an incomplete transfer is never used");
        self.prefix
    }
}

/// One delta or copy round as its sender holds it until acknowledged: the
/// bytes and their digest, taken once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Transfer {
    bytes: Bytes,
    digest: Digest,
}

impl Transfer {
    pub(crate) fn new(bytes: impl Into<Bytes>) -> Transfer {
        let bytes = bytes.into();
        let digest = Digest::of(&bytes);
        Transfer::hashed(bytes, digest)
    }

    /// A capture's bytes, hashed now unless the driver did.
    pub(crate) fn of(capture: Capture) -> Transfer {
        match capture.digest {
            Some(digest) => Transfer::hashed(capture.bytes, digest),
            None => Transfer::new(capture.bytes),
        }
    }

    /// `bytes`, whose digest the driver took as it read them.
    pub(crate) fn hashed(bytes: Bytes, digest: Digest) -> Transfer {
        debug_assert_eq!(digest, Digest::of(&bytes), "the digest is of these bytes");
        Transfer { bytes, digest }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn digest(&self) -> Digest {
        self.digest
    }

    /// The chunks to send it in (see [`split_with`]): slices of the one
    /// buffer, not copies.
    pub(crate) fn chunks(&self, chunk_bytes_max: u32) -> Vec<Chunk> {
        split_with(&self.bytes, self.digest, chunk_bytes_max)
    }
}

/// Splits `bytes` into chunks of at most `chunk_bytes_max` (at least one
/// chunk, even for empty input), each carrying the digest of `bytes`.
#[cfg(test)]
pub(crate) fn split(bytes: &[u8], chunk_bytes_max: u32) -> Vec<Chunk> {
    split_with(
        &Bytes::copy_from_slice(bytes),
        Digest::of(bytes),
        chunk_bytes_max,
    )
}

/// Splits `bytes`, whose digest is `digest`, into chunks of at most
/// `chunk_bytes_max` (at least one chunk, even for empty input).
fn split_with(bytes: &Bytes, digest: Digest, chunk_bytes_max: u32) -> Vec<Chunk> {
    assert!(chunk_bytes_max > 0, "chunks carry bytes");
    let size = chunk_bytes_max as usize;
    let count = bytes.len().div_ceil(size).max(1);
    let count_u32 = u32::try_from(count).expect("transfer_bytes_max bounds the chunk count");
    (0..count)
        .map(|i| Chunk {
            index: u32::try_from(i).expect("below count"),
            count: count_u32,
            digest,
            data: bytes.slice((i * size).min(bytes.len())..((i + 1) * size).min(bytes.len())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u32, count: u32, digest: Digest, data: &[u8]) -> Chunk {
        Chunk {
            index,
            count,
            digest,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn split_and_reassemble_in_any_order() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut chunks = split(&bytes, 64);
        assert_eq!(chunks.len(), 16);
        assert!(chunks.iter().all(|c| c.digest == Digest::of(&bytes)));
        chunks.reverse();
        let mut assembly = Assembly::new(16, Digest::of(&bytes));
        for (i, chunk) in chunks.into_iter().enumerate() {
            assert!(!assembly.is_complete(), "complete after {i} chunks");
            assert_eq!(assembly.offer(chunk.clone(), 1 << 20), Offered::Added);
            // Duplicates are harmless.
            assert_eq!(assembly.offer(chunk, 1 << 20), Offered::Added);
        }
        assert!(assembly.is_complete());
        assert_eq!(assembly.into_bytes(), bytes);
    }

    #[test]
    fn empty_transfer_is_one_chunk() {
        let chunks = split(&[], 64);
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].data.is_empty());
        assert_eq!(chunks[0].digest, Digest::of(&[]));
    }

    #[test]
    fn mismatched_and_oversized_chunks_are_refused() {
        let d = Digest::of(b"whole");
        let mut assembly = Assembly::new(2, d);
        let wrong = chunk(0, 3, d, &[1]);
        assert_eq!(assembly.add(wrong, 100), Err(AssemblyError::CountMismatch));
        let other_digest = chunk(0, 2, Digest::of(b"other"), &[1]);
        assert_eq!(
            assembly.add(other_digest, 100),
            Err(AssemblyError::CountMismatch)
        );
        let big = chunk(0, 2, d, &[0; 101]);
        assert_eq!(assembly.add(big, 100), Err(AssemblyError::TooLarge));
        assert!(!assembly.is_complete());
    }

    #[test]
    fn a_consistent_retransmission_replaces_a_poisoned_assembly() {
        let bytes: Vec<u8> = (0..10).collect();
        let d = Digest::of(&bytes);
        let honest = split(&bytes, 4);
        let mut assembly = Assembly::new(7, d);
        assert_eq!(assembly.offer(chunk(5, 7, d, &[9; 4]), 100), Offered::Added);
        let mut replaced = 0;
        for chunk in honest.iter().cloned() {
            if assembly.offer(chunk, 100) == Offered::Replaced {
                replaced += 1;
            }
        }
        assert_eq!(replaced, 1, "the first honest chunk starts over");
        assert!(assembly.is_complete());
        assert_eq!(assembly.into_bytes(), bytes);
        let mut assembly = Assembly::new(3, d);
        assert_eq!(assembly.offer(chunk(0, 3, d, &[1]), 100), Offered::Added);
        for chunk in honest {
            assembly.offer(chunk, 100);
        }
        assert_eq!(
            assembly.into_bytes(),
            bytes,
            "other bytes at an index are replaced"
        );
        let mut assembly = Assembly::new(1, d);
        assert_eq!(
            assembly.offer(chunk(0, 1, d, &[0; 101]), 100),
            Offered::Refused
        );
        assert_eq!(assembly.chunks(), 0);
    }

    #[test]
    fn bytes_without_the_transfers_digest_are_never_complete() {
        let bytes: Vec<u8> = (0..10).collect();
        let honest = split(&bytes, 4);
        let d = honest[0].digest;
        let mut assembly = Assembly::new(3, d);
        // Other bytes of the right shape, count and digest at index 2,
        // before the honest chunks 0 and 1 complete the count.
        assert_eq!(assembly.offer(chunk(2, 3, d, &[7, 7]), 100), Offered::Added);
        assert_eq!(assembly.offer(honest[0].clone(), 100), Offered::Added);
        assert_eq!(assembly.offer(honest[1].clone(), 100), Offered::Spoiled);
        assert!(!assembly.is_complete());
        assert_eq!(assembly.chunks(), 0, "all dropped");
        for chunk in honest {
            assembly.offer(chunk, 100);
        }
        assert!(assembly.is_complete(), "the retransmission completes it");
        assert_eq!(assembly.into_bytes(), bytes);
    }
}
