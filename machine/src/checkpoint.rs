//! The checkpoint format, one for full and delta checkpoints and for both
//! engines:
//!
//! ```text
//! magic "LKSTCKPT" | version u16 | kind u8 | 0u8 | payload_len u32 | payload | crc32c u32
//! ```
//!
//! The checksum covers everything before it. Decoding checks the size limit
//! first, then the checksum, then every field; bad input is an error.

use crate::codec::{DecodeError, Reader, Writer};
use crate::devices::BLOCK_BYTES;
use crate::layout::Shape;
use crate::units::{PageIndex, PAGE_SIZE};
use crate::vcpu::VcpuState;

/// The first bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"LKSTCKPT";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// The default decode limit: 1 GiB of memory plus state.
pub const CHECKPOINT_BYTES_MAX: usize = (1 << 30) + (64 << 20);
const HEADER_BYTES: usize = 16;

/// Whole state or changes since the previous checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every page and every disk block.
    Full,
    /// Pages and blocks written since checkpoint `base_sequence`.
    Delta,
}

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Full or delta.
    pub kind: Kind,
    /// This checkpoint's number on its machine (boot is 0).
    pub sequence: u64,
    /// For a delta, the checkpoint it applies on top of.
    pub base_sequence: u64,
    /// vCPU count.
    pub vcpus: u16,
    /// Memory size.
    pub memory_bytes: u64,
    /// Pages with their contents, sorted.
    pub pages: Vec<(PageIndex, Vec<u8>)>,
    /// Every vCPU's state.
    pub vcpu_states: Vec<VcpuState>,
    /// The device bus's saved state.
    pub devices: Vec<u8>,
    /// The engine's state: an [`crate::EngineEnvelope`] (engine name, guest
    /// time, private bytes).
    pub engine: Vec<u8>,
    /// Disk blocks with their contents, sorted.
    pub blocks: Vec<(u64, Vec<u8>)>,
}

impl Checkpoint {
    /// Encodes with magic, version, length and checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Writer::new();
        p.u64(self.sequence);
        p.u64(self.base_sequence);
        p.u16(self.vcpus);
        p.u64(self.memory_bytes);
        p.u32(u32::try_from(self.pages.len()).expect("pages fit u32"));
        for (index, bytes) in &self.pages {
            assert_eq!(bytes.len() as u64, PAGE_SIZE);
            p.u32(index.0);
            p.raw(bytes);
        }
        p.u32(u32::try_from(self.vcpu_states.len()).expect("few vCPUs"));
        for state in &self.vcpu_states {
            state.encode(&mut p);
        }
        p.blob(&self.devices);
        p.blob(&self.engine);
        p.u32(u32::try_from(self.blocks.len()).expect("blocks fit u32"));
        for (block, bytes) in &self.blocks {
            assert_eq!(bytes.len(), BLOCK_BYTES);
            p.u64(*block);
            p.raw(bytes);
        }
        let payload = p.into_bytes();
        let mut w = Writer::new();
        w.raw(&MAGIC);
        w.u16(VERSION);
        w.u8(match self.kind {
            Kind::Full => 0,
            Kind::Delta => 1,
        });
        w.u8(0);
        w.u32(u32::try_from(payload.len()).expect("checkpoints are below 4 GiB"));
        w.raw(&payload);
        let mut bytes = w.into_bytes();
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes a checkpoint of at most `limit` bytes.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Checkpoint, DecodeError> {
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        let mut r = Reader::new(bytes);
        if r.raw(MAGIC.len())? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let kind = match r.u8()? {
            0 => Kind::Full,
            1 => Kind::Delta,
            other => return Err(DecodeError::Invalid(format!("kind {other}"))),
        };
        let reserved = r.u8()?;
        if reserved != 0 {
            return Err(DecodeError::Invalid(format!(
                "reserved header byte is {reserved}, not 0"
            )));
        }
        let payload_len = r.u32()? as usize;
        let payload = r.raw(payload_len)?;
        let stored = r.u32()?;
        r.finish()?;
        let computed = crc32c::crc32c(&bytes[..HEADER_BYTES + payload_len]);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        let mut checkpoint = decode_payload(&mut Reader::new(payload), kind)?;
        checkpoint.kind = kind;
        Ok(checkpoint)
    }
}

fn decode_payload(r: &mut Reader<'_>, kind: Kind) -> Result<Checkpoint, DecodeError> {
    let sequence = r.u64()?;
    let base_sequence = r.u64()?;
    let vcpus = r.u16()?;
    let memory_bytes = r.u64()?;
    let shape = Shape::new(vcpus, memory_bytes).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let mut pages = Vec::new();
    let mut previous = None;
    for _ in 0..r.count(shape.pages() as usize)? {
        let index = PageIndex(r.u32()?);
        if index.0 >= shape.pages() || previous.is_some_and(|p| p >= index) {
            return Err(DecodeError::Invalid(format!("page {}", index.0)));
        }
        previous = Some(index);
        pages.push((index, r.raw(PAGE_SIZE as usize)?.to_vec()));
    }
    if r.count(usize::from(vcpus))? != usize::from(vcpus) {
        return Err(DecodeError::Invalid("vCPU count".into()));
    }
    let mut vcpu_states = Vec::new();
    for _ in 0..vcpus {
        vcpu_states.push(VcpuState::decode(r)?);
    }
    let devices = r.blob()?.to_vec();
    let engine = r.blob()?.to_vec();
    let mut blocks: Vec<(u64, Vec<u8>)> = Vec::new();
    for _ in 0..r.count(1 << 24)? {
        let block = r.u64()?;
        if blocks.last().is_some_and(|(last, _)| *last >= block) {
            return Err(DecodeError::Invalid(format!("block {block}")));
        }
        blocks.push((block, r.raw(BLOCK_BYTES)?.to_vec()));
    }
    r.finish()?;
    Ok(Checkpoint {
        kind,
        sequence,
        base_sequence,
        vcpus,
        memory_bytes,
        pages,
        vcpu_states,
        devices,
        engine,
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::initial_vcpu_state;
    use crate::layout::MEMORY_BYTES_MIN;
    use quickcheck::{QuickCheck, TestResult};

    fn sample() -> Checkpoint {
        let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
        Checkpoint {
            kind: Kind::Delta,
            sequence: 3,
            base_sequence: 2,
            vcpus: 2,
            memory_bytes: MEMORY_BYTES_MIN,
            pages: vec![(PageIndex(1), vec![7; 4096]), (PageIndex(9), vec![8; 4096])],
            vcpu_states: vec![initial_vcpu_state(&shape, 0), initial_vcpu_state(&shape, 1)],
            devices: vec![1, 2, 3],
            engine: vec![4, 5],
            blocks: vec![(0, vec![9; BLOCK_BYTES])],
        }
    }

    #[test]
    fn round_trips() {
        let checkpoint = sample();
        let bytes = checkpoint.encode();
        assert_eq!(
            Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX),
            Ok(checkpoint)
        );
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_an_error() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(Checkpoint::decode(&bytes[..len], CHECKPOINT_BYTES_MAX).is_err());
        }
        for at in (0..bytes.len()).step_by(97) {
            let mut corrupt = bytes.clone();
            corrupt[at] ^= 0x10;
            assert!(
                Checkpoint::decode(&corrupt, CHECKPOINT_BYTES_MAX).is_err(),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn a_set_reserved_byte_is_refused() {
        let mut bytes = sample().encode();
        bytes[MAGIC.len() + 3] = 1;
        let crc_at = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
        let error = Checkpoint::decode(&bytes, 1 << 24).unwrap_err();
        assert!(
            matches!(&error, DecodeError::Invalid(m) if m.contains("reserved")),
            "{error}"
        );
    }

    #[test]
    fn size_limit_is_checked_first() {
        let bytes = sample().encode();
        assert!(matches!(
            Checkpoint::decode(&bytes, 100),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        fn prop(bytes: Vec<u8>, valid_header: bool) -> TestResult {
            let mut input = bytes;
            if valid_header {
                let mut framed = MAGIC.to_vec();
                framed.extend_from_slice(&VERSION.to_le_bytes());
                framed.extend_from_slice(&input);
                input = framed;
            }
            let _ = Checkpoint::decode(&input, CHECKPOINT_BYTES_MAX);
            TestResult::passed()
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(Vec<u8>, bool) -> TestResult);
    }

    /// Frames `payload` with a valid header and checksum, so the payload
    /// decoder itself sees the random bytes.
    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn random_payloads_with_valid_checksum_never_panic() {
        fn prop(payload: Vec<u8>, flips: Vec<(u16, u8)>) -> bool {
            let _ = Checkpoint::decode(&framed(&payload), CHECKPOINT_BYTES_MAX);
            let good = sample().encode();
            let mut inner = good[HEADER_BYTES..good.len() - 4].to_vec();
            for (at, mask) in flips {
                let at = usize::from(at) % inner.len();
                inner[at] ^= mask;
            }
            let _ = Checkpoint::decode(&framed(&inner), CHECKPOINT_BYTES_MAX);
            true
        }
        QuickCheck::new()
            .tests(1000)
            .quickcheck(prop as fn(Vec<u8>, Vec<(u16, u8)>) -> bool);
    }

    #[test]
    fn corrupted_checkpoints_never_panic() {
        fn prop(flips: Vec<(u16, u8)>, cut: u16) -> bool {
            let mut bytes = sample().encode();
            for (at, mask) in flips {
                let at = usize::from(at) % bytes.len();
                bytes[at] ^= mask;
            }
            bytes.truncate(bytes.len() - usize::from(cut) % 64);
            let _ = Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX);
            true
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop as fn(Vec<(u16, u8)>, u16) -> bool);
    }
}
