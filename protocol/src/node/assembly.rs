//! Reassembly of a delta or copy round from its chunks, and the splitting
//! that produces them.

use crate::wire::Chunk;
use std::collections::BTreeMap;

/// Chunks received so far of one transfer. Complete only when every index
/// in `0..count` arrived; an incomplete transfer is never handed out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Assembly {
    count: u32,
    parts: BTreeMap<u32, Vec<u8>>,
    bytes: u64,
}

/// A chunk that does not fit the transfer it claims to belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AssemblyError {
    /// The chunk count differs from the first chunk's.
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
}

impl Assembly {
    pub(crate) fn new(count: u32) -> Assembly {
        assert!(count > 0, "a transfer has at least one chunk");
        Assembly {
            count,
            parts: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Adds a chunk; a duplicate of one already held is ignored.
    pub(crate) fn add(&mut self, chunk: Chunk, bytes_max: u64) -> Result<(), AssemblyError> {
        if chunk.count != self.count || chunk.index >= self.count {
            return Err(AssemblyError::CountMismatch);
        }
        if let Some(held) = self.parts.get(&chunk.index) {
            if *held != chunk.data {
                return Err(AssemblyError::DataMismatch);
            }
            return Ok(());
        }
        let bytes = self.bytes + chunk.data.len() as u64;
        if bytes > bytes_max {
            return Err(AssemblyError::TooLarge);
        }
        self.bytes = bytes;
        self.parts.insert(chunk.index, chunk.data);
        assert!(
            self.parts.len() <= self.count as usize,
            "indices are below count"
        );
        Ok(())
    }

    /// Adds a chunk to the transfer, or starts the transfer over from it if
    /// it contradicts what is held (another count, other bytes at its
    /// index, or more bytes than the limit): a forged or stale chunk may
    /// spoil an assembly, but the sender's next consistent retransmission
    /// always completes it.
    pub(crate) fn offer(&mut self, chunk: Chunk, bytes_max: u64) -> Offered {
        if chunk.data.len() as u64 > bytes_max {
            return Offered::Refused;
        }
        match self.add(chunk.clone(), bytes_max) {
            Ok(()) => Offered::Added,
            Err(_) => {
                *self = Assembly::new(chunk.count);
                self.add(chunk, bytes_max)
                    .expect("a chunk within the limit starts a transfer");
                Offered::Replaced
            }
        }
    }

    /// Chunks held.
    pub(crate) fn chunks(&self) -> usize {
        self.parts.len()
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The broken variant: fills missing chunks with nothing.
    #[cfg(feature = "mutants")]
    pub(crate) fn pretend_complete(&mut self) {
        for index in 0..self.count {
            self.parts.entry(index).or_default();
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.parts.len() == self.count as usize
    }

    /// The whole transfer; only once complete.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        assert!(self.is_complete(), "an incomplete transfer is never used");
        let mut out = Vec::with_capacity(usize::try_from(self.bytes).expect("fits in memory"));
        for part in self.parts.into_values() {
            out.extend_from_slice(&part);
        }
        out
    }
}

/// Splits `bytes` into chunks of at most `chunk_bytes_max` (at least one
/// chunk, even for empty input).
pub(crate) fn split(bytes: &[u8], chunk_bytes_max: u32) -> Vec<Chunk> {
    assert!(chunk_bytes_max > 0, "chunks carry bytes");
    let size = chunk_bytes_max as usize;
    let count = bytes.len().div_ceil(size).max(1);
    let count_u32 = u32::try_from(count).expect("transfer_bytes_max bounds the chunk count");
    (0..count)
        .map(|i| Chunk {
            index: u32::try_from(i).expect("below count"),
            count: count_u32,
            data: bytes[(i * size).min(bytes.len())..((i + 1) * size).min(bytes.len())].to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_reassemble_in_any_order() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut chunks = split(&bytes, 64);
        assert_eq!(chunks.len(), 16);
        chunks.reverse();
        let mut assembly = Assembly::new(16);
        for (i, chunk) in chunks.into_iter().enumerate() {
            assert!(!assembly.is_complete(), "complete after {i} chunks");
            assembly.add(chunk.clone(), 1 << 20).unwrap();
            assembly.add(chunk, 1 << 20).unwrap(); // duplicates are harmless
        }
        assert!(assembly.is_complete());
        assert_eq!(assembly.into_bytes(), bytes);
    }

    #[test]
    fn empty_transfer_is_one_chunk() {
        let chunks = split(&[], 64);
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].data.is_empty());
    }

    #[test]
    fn mismatched_and_oversized_chunks_are_refused() {
        let mut assembly = Assembly::new(2);
        let wrong = Chunk {
            index: 0,
            count: 3,
            data: vec![1],
        };
        assert_eq!(assembly.add(wrong, 100), Err(AssemblyError::CountMismatch));
        let big = Chunk {
            index: 0,
            count: 2,
            data: vec![0; 101],
        };
        assert_eq!(assembly.add(big, 100), Err(AssemblyError::TooLarge));
        assert!(!assembly.is_complete());
    }

    #[test]
    fn a_consistent_retransmission_replaces_a_poisoned_assembly() {
        let bytes: Vec<u8> = (0..10).collect();
        let honest = split(&bytes, 4);
        let mut assembly = Assembly::new(7);
        let forged = Chunk {
            index: 5,
            count: 7,
            data: vec![9; 4],
        };
        assert_eq!(assembly.offer(forged, 100), Offered::Added);
        let mut replaced = 0;
        for chunk in honest.iter().cloned() {
            if assembly.offer(chunk, 100) == Offered::Replaced {
                replaced += 1;
            }
        }
        assert_eq!(replaced, 1, "the first honest chunk starts over");
        assert!(assembly.is_complete());
        assert_eq!(assembly.into_bytes(), bytes);
        let mut assembly = Assembly::new(3);
        let other_bytes = Chunk {
            index: 0,
            count: 3,
            data: vec![1],
        };
        assert_eq!(assembly.offer(other_bytes, 100), Offered::Added);
        for chunk in honest {
            assembly.offer(chunk, 100);
        }
        assert_eq!(
            assembly.into_bytes(),
            bytes,
            "other bytes at an index are replaced"
        );
        let mut assembly = Assembly::new(1);
        let huge = Chunk {
            index: 0,
            count: 1,
            data: vec![0; 101],
        };
        assert_eq!(assembly.offer(huge, 100), Offered::Refused);
        assert_eq!(assembly.chunks(), 0);
    }
}
