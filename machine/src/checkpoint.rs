//! The checkpoint format, one for full and delta checkpoints and for both
//! engines:
//!
//! ```text
//! magic "LKSTCKPT" | version u16 | kind u8 | 0u8 | payload | payload_len u32 | crc32c u32
//! ```
//!
//! The checksum covers everything before it. Decoding checks the size limit
//! first, then the checksum, then every field; bad input is an error. The
//! length follows the payload, so every byte is final once written: a
//! large checkpoint read a part at a time is checksummed and hashed (for
//! the wire) a part at a time, and its last part costs no more than any.

use crate::codec::{DecodeError, Reader, Writer};
use crate::devices::BLOCK_BYTES;
use crate::layout::Shape;
use crate::units::{PageIndex, PAGE_SIZE};
use crate::vcpu::{SystemAllowed, VcpuState};

/// The first bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"LKSTCKPT";
/// The format version this code writes: 5, whose platform section may
/// carry, after the PC platform's state, further parts that delimit
/// themselves (a tag and a blob: the virtio devices',
/// [`crate::virtio::PLATFORM_PART_VIRTIO`]); a version 4 section is one
/// without parts. Version 4 has a platform section (the PC platform's
/// state, [`crate::pc`]) after the engine's; version 3 is the same layout
/// without it; from 3 on, vCPU states may carry [`crate::SystemRegisters`]
/// (a flag in each state says so).
pub const VERSION: u16 = 5;
/// The oldest version this code reads: 2, the layout of 3 whose vCPU
/// states cannot carry system registers.
pub const VERSION_MIN: u16 = 2;
/// The default decode limit: 1 GiB of memory plus state.
pub const CHECKPOINT_BYTES_MAX: usize = (1 << 30) + (64 << 20);
const HEADER_BYTES: usize = 12;
/// The payload's length and the checksum, after the payload.
const TRAILER_BYTES: usize = 8;
/// A writer checksums what it wrote once this much is new.
const SUM_EVERY: usize = 1 << 20;

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
    /// The PC platform's saved state; empty for a machine without one
    /// (and in versions before 4).
    pub platform: Vec<u8>,
    /// Disk blocks with their contents, sorted.
    pub blocks: Vec<(u64, Vec<u8>)>,
}

impl Checkpoint {
    /// Encodes with magic, version, length and checksum.
    pub fn encode(&self) -> Vec<u8> {
        self.writer(false).finish()
    }

    /// Encodes, and takes the SHA-256 of the encoding on the way.
    pub fn encode_hashed(&self) -> (Vec<u8>, [u8; 32]) {
        let (bytes, digest) = self.writer(true).finish_hashed();
        (bytes, digest.expect("hashing"))
    }

    fn writer(&self, hashing: bool) -> CheckpointWriter {
        let pages = u32::try_from(self.pages.len()).expect("pages fit u32");
        let mut w = CheckpointWriter::begin(
            self.kind,
            self.sequence,
            self.base_sequence,
            (self.vcpus, self.memory_bytes),
            pages,
            encoded_bytes(self),
        );
        if hashing {
            w = w.hashing();
        }
        for (index, bytes) in &self.pages {
            w.page(*index).copy_from_slice(bytes);
        }
        w.state(
            &self.vcpu_states,
            &self.devices,
            &self.engine,
            &self.platform,
        );
        w.block_count(u32::try_from(self.blocks.len()).expect("blocks fit u32"));
        for (block, bytes) in &self.blocks {
            w.block(*block).copy_from_slice(bytes);
        }
        w
    }

    /// Decodes a checkpoint of at most `limit` bytes.
    pub fn decode(bytes: &[u8], limit: usize) -> Result<Checkpoint, DecodeError> {
        Ok(CheckpointRef::decode(bytes, limit)?.to_owned())
    }

    /// This checkpoint, borrowed.
    pub fn as_ref(&self) -> CheckpointRef<'_> {
        CheckpointRef {
            kind: self.kind,
            sequence: self.sequence,
            base_sequence: self.base_sequence,
            vcpus: self.vcpus,
            memory_bytes: self.memory_bytes,
            pages: self.pages.iter().map(|(i, b)| (*i, b.as_slice())).collect(),
            vcpu_states: self.vcpu_states.clone(),
            devices: &self.devices,
            engine: &self.engine,
            platform: &self.platform,
            blocks: self
                .blocks
                .iter()
                .map(|(n, b)| (*n, b.as_slice()))
                .collect(),
        }
    }
}

/// The size of `checkpoint` encoded, near enough to size the buffer once.
fn encoded_bytes(checkpoint: &Checkpoint) -> usize {
    HEADER_BYTES
        + 64
        + checkpoint.pages.len() * (4 + PAGE_SIZE as usize)
        + checkpoint.vcpu_states.len() * 512
        + checkpoint.devices.len()
        + checkpoint.engine.len()
        + checkpoint.platform.len()
        + checkpoint.blocks.len() * (8 + BLOCK_BYTES)
        + TRAILER_BYTES
}

/// A checkpoint decoded in place: pages and blocks borrow the encoded
/// bytes, so applying a large one copies each page once, into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRef<'a> {
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
    pub pages: Vec<(PageIndex, &'a [u8])>,
    /// Every vCPU's state.
    pub vcpu_states: Vec<VcpuState>,
    /// The device bus's saved state.
    pub devices: &'a [u8],
    /// The engine's state.
    pub engine: &'a [u8],
    /// The PC platform's state (empty: none).
    pub platform: &'a [u8],
    /// Disk blocks with their contents, sorted.
    pub blocks: Vec<(u64, &'a [u8])>,
}

impl<'a> CheckpointRef<'a> {
    /// Decodes a checkpoint of at most `limit` bytes, borrowing its pages.
    pub fn decode(bytes: &'a [u8], limit: usize) -> Result<CheckpointRef<'a>, DecodeError> {
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
        if !(VERSION_MIN..=VERSION).contains(&version) {
            return Err(DecodeError::Version(version));
        }
        let system = if version >= 3 {
            SystemAllowed::Yes
        } else {
            SystemAllowed::No
        };
        let platform = if version >= 4 {
            Section::Present
        } else {
            Section::Absent
        };
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
        let trailer_at = bytes
            .len()
            .checked_sub(TRAILER_BYTES)
            .filter(|at| *at >= HEADER_BYTES)
            .ok_or(DecodeError::Truncated {
                offset: bytes.len(),
                needed: (HEADER_BYTES + TRAILER_BYTES).saturating_sub(bytes.len()),
            })?;
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let (payload_len, stored) = (word(trailer_at) as usize, word(trailer_at + 4));
        if payload_len != trailer_at - HEADER_BYTES {
            return Err(DecodeError::Invalid(format!(
                "payload length {payload_len}, but {} bytes are there",
                trailer_at - HEADER_BYTES
            )));
        }
        let computed = crc32c::crc32c(&bytes[..trailer_at + 4]);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        decode_payload(
            &mut Reader::new(&bytes[HEADER_BYTES..trailer_at]),
            kind,
            (system, platform),
        )
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Checkpoint {
        Checkpoint {
            kind: self.kind,
            sequence: self.sequence,
            base_sequence: self.base_sequence,
            vcpus: self.vcpus,
            memory_bytes: self.memory_bytes,
            pages: self.pages.iter().map(|(i, b)| (*i, b.to_vec())).collect(),
            vcpu_states: self.vcpu_states.clone(),
            devices: self.devices.to_vec(),
            engine: self.engine.to_vec(),
            platform: self.platform.to_vec(),
            blocks: self.blocks.iter().map(|(n, b)| (*n, b.to_vec())).collect(),
        }
    }
}

/// Writes a checkpoint's encoding in order, a part at a time, into one
/// buffer: the fixed fields, the pages, the vCPU, device and engine state,
/// the disk blocks; then the length and checksum. A checkpoint taken while
/// the guest runs (a pre-copy round) is written this way as it is read.
/// What is written is checksummed (and, if asked, hashed) as the next part
/// begins, so finishing costs no pass over the whole.
pub struct CheckpointWriter {
    bytes: Vec<u8>,
    pages_left: u32,
    blocks_left: Option<u32>,
    /// Bytes checksummed (and hashed) so far.
    summed: usize,
    crc: u32,
    sha: Option<sha2::Sha256>,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("bytes", &self.bytes.len())
            .field("pages_left", &self.pages_left)
            .field("blocks_left", &self.blocks_left)
            .field("hashing", &self.sha.is_some())
            .finish()
    }
}

impl CheckpointWriter {
    /// Bytes of memory its buffer holds (written or reserved).
    pub fn bytes_held(&self) -> usize {
        self.bytes.capacity()
    }

    /// Starts a checkpoint of `pages` pages; `capacity` sizes the buffer.
    pub fn begin(
        kind: Kind,
        sequence: u64,
        base_sequence: u64,
        (vcpus, memory_bytes): (u16, u64),
        pages: u32,
        capacity: usize,
    ) -> CheckpointWriter {
        let mut w = Writer::with_capacity(capacity);
        w.raw(&MAGIC);
        w.u16(VERSION);
        w.u8(match kind {
            Kind::Full => 0,
            Kind::Delta => 1,
        });
        w.u8(0);
        w.u64(sequence);
        w.u64(base_sequence);
        w.u16(vcpus);
        w.u64(memory_bytes);
        w.u32(pages);
        CheckpointWriter {
            bytes: w.into_bytes(),
            pages_left: pages,
            blocks_left: None,
            summed: 0,
            crc: 0,
            sha: None,
        }
    }

    /// Also takes the SHA-256 of the encoding, as it is written.
    pub fn hashing(mut self) -> CheckpointWriter {
        assert_eq!(self.summed, 0, "hashing from the first byte");
        self.sha = Some(sha2::Sha256::default());
        self
    }

    /// Checksums (and hashes) what was written since the last call: every
    /// slot handed out before is filled by now.
    fn sum(&mut self) {
        use sha2::Digest as _;
        let fresh = &self.bytes[self.summed..];
        self.crc = crc32c::crc32c_append(self.crc, fresh);
        if let Some(sha) = &mut self.sha {
            sha.update(fresh);
        }
        self.summed = self.bytes.len();
    }

    /// The next page, `index`: its bytes to fill (pages go in ascending order).
    pub fn page(&mut self, index: PageIndex) -> &mut [u8] {
        self.pages_left = self
            .pages_left
            .checked_sub(1)
            .expect("as many pages as begun");
        self.slot(&index.0.to_le_bytes(), PAGE_SIZE as usize)
    }

    /// After the pages: the vCPUs', devices', engine's and platform's state.
    pub fn state(
        &mut self,
        vcpu_states: &[VcpuState],
        devices: &[u8],
        engine: &[u8],
        platform: &[u8],
    ) {
        assert_eq!(self.pages_left, 0, "every page is written before the state");
        self.sum();
        let mut w = Writer::new();
        w.u32(u32::try_from(vcpu_states.len()).expect("few vCPUs"));
        for state in vcpu_states {
            state.encode(&mut w);
        }
        w.blob(devices);
        w.blob(engine);
        w.blob(platform);
        self.bytes.extend_from_slice(&w.into_bytes());
    }

    /// After the state: how many disk blocks follow.
    pub fn block_count(&mut self, blocks: u32) {
        assert!(self.blocks_left.is_none(), "one block count");
        self.blocks_left = Some(blocks);
        self.bytes.extend_from_slice(&blocks.to_le_bytes());
    }

    /// The next disk block, `number`: its bytes to fill (ascending order).
    pub fn block(&mut self, number: u64) -> &mut [u8] {
        let left = self.blocks_left.as_mut().expect("the block count first");
        *left = left.checked_sub(1).expect("as many blocks as counted");
        self.slot(&number.to_le_bytes(), BLOCK_BYTES)
    }

    fn slot(&mut self, key: &[u8], len: usize) -> &mut [u8] {
        if self.bytes.len() - self.summed >= SUM_EVERY {
            self.sum();
        }
        self.bytes.extend_from_slice(key);
        let at = self.bytes.len();
        self.bytes.resize(at + len, 0);
        &mut self.bytes[at..]
    }

    /// The encoded checkpoint.
    pub fn finish(self) -> Vec<u8> {
        self.finish_hashed().0
    }

    /// The encoded checkpoint, and its SHA-256 if [`CheckpointWriter::hashing`].
    pub fn finish_hashed(mut self) -> (Vec<u8>, Option<[u8; 32]>) {
        use sha2::Digest as _;
        assert_eq!(self.blocks_left, Some(0), "every block counted is written");
        let payload =
            u32::try_from(self.bytes.len() - HEADER_BYTES).expect("checkpoints are below 4 GiB");
        self.bytes.extend_from_slice(&payload.to_le_bytes());
        self.sum();
        let crc = self.crc;
        self.bytes.extend_from_slice(&crc.to_le_bytes());
        let digest = self.sha.take().map(|mut sha| {
            sha.update(crc.to_le_bytes());
            sha.finalize().into()
        });
        (self.bytes, digest)
    }
}

/// Whether a version has a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Present,
    Absent,
}

fn decode_payload<'a>(
    r: &mut Reader<'a>,
    kind: Kind,
    (system, platform_section): (SystemAllowed, Section),
) -> Result<CheckpointRef<'a>, DecodeError> {
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
        pages.push((index, r.raw(PAGE_SIZE as usize)?));
    }
    if r.count(usize::from(vcpus))? != usize::from(vcpus) {
        return Err(DecodeError::Invalid("vCPU count".into()));
    }
    let mut vcpu_states = Vec::new();
    for _ in 0..vcpus {
        vcpu_states.push(VcpuState::decode(r, system)?);
    }
    let devices = r.blob()?;
    let engine = r.blob()?;
    let platform = match platform_section {
        Section::Present => r.blob()?,
        Section::Absent => &[],
    };
    let mut blocks: Vec<(u64, &[u8])> = Vec::new();
    for _ in 0..r.count(1 << 24)? {
        let block = r.u64()?;
        if blocks.last().is_some_and(|(last, _)| *last >= block) {
            return Err(DecodeError::Invalid(format!("block {block}")));
        }
        blocks.push((block, r.raw(BLOCK_BYTES)?));
    }
    r.finish()?;
    Ok(CheckpointRef {
        kind,
        sequence,
        base_sequence,
        vcpus,
        memory_bytes,
        pages,
        vcpu_states,
        devices,
        engine,
        platform,
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
            platform: vec![],
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

    /// Sets the checksum of an edited encoding right again.
    fn reseal(bytes: &mut [u8]) {
        let crc_at = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..crc_at]);
        bytes[crc_at..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn a_set_reserved_byte_is_refused() {
        let mut bytes = sample().encode();
        bytes[MAGIC.len() + 3] = 1;
        reseal(&mut bytes);
        let error = Checkpoint::decode(&bytes, 1 << 24).unwrap_err();
        assert!(
            matches!(&error, DecodeError::Invalid(m) if m.contains("reserved")),
            "{error}"
        );
    }

    #[test]
    fn a_length_that_does_not_span_the_payload_is_refused() {
        let mut bytes = sample().encode();
        let at = bytes.len() - TRAILER_BYTES;
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        bytes[at..at + 4].copy_from_slice(&(len - 1).to_le_bytes());
        reseal(&mut bytes);
        let error = Checkpoint::decode(&bytes, 1 << 24).unwrap_err();
        assert!(
            matches!(&error, DecodeError::Invalid(m) if m.contains("payload length")),
            "{error}"
        );
    }

    fn with_system_registers() -> Checkpoint {
        let mut checkpoint = sample();
        let system = crate::SystemRegisters {
            cr2: 0xdead_b000,
            lstar: 0xffff_ffff_8100_0000,
            star: 0x0023_0010_0000_0000,
            sfmask: 0x4_7700,
            kernel_gs_base: 0xffff_8880_0000_0000,
            pending_interrupt: Some(0x20),
            interrupt_shadow: true,
            idt: crate::vcpu::DescriptorTable {
                base: 0x7000,
                limit: 0xfff,
            },
            tr: crate::vcpu::Segment {
                selector: 0x38,
                base: 0x8000,
                limit: 0x67,
                attributes: 0x8b,
            },
            ..Default::default()
        };
        checkpoint.vcpu_states[1].system = Some(system);
        checkpoint.platform = vec![6, 7, 8];
        checkpoint
    }

    /// Rewrites the version of an encoding (and its checksum).
    fn as_version(bytes: &mut [u8], version: u16) {
        bytes[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&version.to_le_bytes());
        reseal(bytes);
    }

    #[test]
    fn system_registers_round_trip() {
        let checkpoint = with_system_registers();
        let bytes = checkpoint.encode();
        let decoded = Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX).expect("decodes");
        assert_eq!(decoded, checkpoint);
        assert_eq!(
            decoded.vcpu_states[1]
                .system
                .as_ref()
                .map(|s| s.pending_interrupt),
            Some(Some(0x20))
        );
        assert!(decoded.vcpu_states[0].system.is_none());
    }

    /// The encoding of `checkpoint` (which has no platform state) in
    /// format `version`, 2 or 3: version 4's without its empty platform
    /// section.
    fn encoded_as(checkpoint: &Checkpoint, version: u16) -> Vec<u8> {
        assert!(checkpoint.platform.is_empty());
        let mut bytes = checkpoint.encode();
        let blocks = 4 + checkpoint.blocks.len() * (8 + BLOCK_BYTES);
        let blocks_at = bytes.len() - TRAILER_BYTES - blocks;
        let platform_at = blocks_at - 4;
        assert_eq!(
            bytes[platform_at..blocks_at],
            [0; 4],
            "an empty platform blob"
        );
        bytes.drain(platform_at..blocks_at);
        let trailer_at = bytes.len() - TRAILER_BYTES;
        let payload = u32::try_from(trailer_at - HEADER_BYTES).expect("small");
        bytes[trailer_at..trailer_at + 4].copy_from_slice(&payload.to_le_bytes());
        as_version(&mut bytes, version);
        bytes
    }

    #[test]
    fn platform_state_round_trips_in_its_own_section() {
        let checkpoint = with_system_registers();
        let decoded = Checkpoint::decode(&checkpoint.encode(), CHECKPOINT_BYTES_MAX);
        assert_eq!(
            decoded.as_ref().map(|c| &c.platform[..]),
            Ok(&[6, 7, 8][..])
        );
        assert_eq!(decoded, Ok(checkpoint));
    }

    #[test]
    fn version_4_is_read_with_the_same_platform_section() {
        // Version 5 only lets the section carry parts after the PC's
        // state; a version 4 section is one without.
        let checkpoint = with_system_registers();
        let mut bytes = checkpoint.encode();
        as_version(&mut bytes, 4);
        assert_eq!(
            Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX),
            Ok(checkpoint)
        );
    }

    #[test]
    fn version_3_is_read_without_a_platform_section() {
        let mut checkpoint = with_system_registers();
        checkpoint.platform.clear();
        let old = encoded_as(&checkpoint, 3);
        assert_eq!(
            Checkpoint::decode(&old, CHECKPOINT_BYTES_MAX),
            Ok(checkpoint)
        );
        // A version 4 encoding called 3 has a section too many: its
        // platform blob's length reads as the block count.
        let mut relabelled = with_system_registers().encode();
        as_version(&mut relabelled, 3);
        assert!(Checkpoint::decode(&relabelled, CHECKPOINT_BYTES_MAX).is_err());
    }

    #[test]
    fn version_2_is_read_and_cannot_carry_system_registers() {
        let plain = encoded_as(&sample(), 2);
        assert_eq!(
            Checkpoint::decode(&plain, CHECKPOINT_BYTES_MAX),
            Ok(sample())
        );
        let mut system = with_system_registers().encode();
        as_version(&mut system, 2);
        let error = Checkpoint::decode(&system, CHECKPOINT_BYTES_MAX).unwrap_err();
        assert!(
            matches!(&error, DecodeError::Invalid(m) if m.contains("system registers")),
            "{error}"
        );
    }

    #[test]
    fn versions_outside_2_to_4_are_refused() {
        for version in [0, 1, VERSION + 1, u16::MAX] {
            let mut bytes = sample().encode();
            as_version(&mut bytes, version);
            assert_eq!(
                Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX),
                Err(DecodeError::Version(version))
            );
        }
    }

    #[test]
    fn a_bad_pending_vector_or_shadow_is_refused() {
        let checkpoint = with_system_registers();
        let bytes = checkpoint.encode();
        // The last vCPU state ends with the pending vector (u16) and the
        // shadow (u8); after it: the device, engine and platform blobs (u32
        // length each), the block count and the blocks.
        let after = (4 + checkpoint.devices.len())
            + (4 + checkpoint.engine.len())
            + (4 + checkpoint.platform.len())
            + 4
            + checkpoint.blocks.len() * (8 + BLOCK_BYTES);
        let shadow_at = bytes.len() - TRAILER_BYTES - after - 1;
        assert_eq!(bytes[shadow_at], 1, "the shadow byte");
        let mut bad_shadow = bytes.clone();
        bad_shadow[shadow_at] = 2;
        reseal(&mut bad_shadow);
        let error = Checkpoint::decode(&bad_shadow, CHECKPOINT_BYTES_MAX).unwrap_err();
        assert!(
            matches!(&error, DecodeError::Invalid(m) if m.contains("shadow")),
            "{error}"
        );
        let mut bad_vector = bytes;
        bad_vector[shadow_at - 1] = 2; // high byte of the u16: 0x220
        reseal(&mut bad_vector);
        let error = Checkpoint::decode(&bad_vector, CHECKPOINT_BYTES_MAX).unwrap_err();
        assert!(
            matches!(&error, DecodeError::Invalid(m) if m.contains("pending vector")),
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
        bytes.extend_from_slice(payload);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn random_payloads_with_valid_checksum_never_panic() {
        fn prop(payload: Vec<u8>, flips: Vec<(u16, u8)>) -> bool {
            let _ = Checkpoint::decode(&framed(&payload), CHECKPOINT_BYTES_MAX);
            let good = with_system_registers().encode();
            let mut inner = good[HEADER_BYTES..good.len() - TRAILER_BYTES].to_vec();
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
