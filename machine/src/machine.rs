//! A machine: an engine, the device bus it calls, and the checkpoint
//! sequence. Taking and restoring checkpoints lives here, engine-neutral.

use std::collections::BTreeSet;

use crate::checkpoint::{Checkpoint, CheckpointRef, CheckpointWriter, Kind};
use crate::codec::{DecodeError, Reader, Writer};
use crate::devices::{DeviceBus, StoreError, BLOCK_BYTES};
use crate::engine::{Engine, EngineEnvelope, EngineError, RunExit};
use crate::layout::Shape;
use crate::rng::Fnv64;
use crate::units::{Instructions, PageIndex, VcpuId, PAGE_SIZE};

/// Error from machine operations.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The engine failed or the guest faulted.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The disk's store failed.
    #[error("disk store: {0}")]
    Store(#[from] StoreError),
    /// Saved state did not decode.
    #[error("saved state: {0}")]
    Decode(#[from] DecodeError),
    /// A checkpoint for a machine of another shape.
    #[error("checkpoint is for {vcpus} vCPUs and {memory_bytes} bytes")]
    ShapeMismatch {
        /// Its vCPU count.
        vcpus: u16,
        /// Its memory size.
        memory_bytes: u64,
    },
    /// A delta whose base is not this machine's current checkpoint.
    #[error("delta applies on checkpoint {base}, machine is at {current}")]
    WrongBase {
        /// The delta's base.
        base: u64,
        /// This machine's last checkpoint.
        current: u64,
    },
}

/// An engine with its devices.
#[derive(Debug)]
pub struct Machine<E: Engine> {
    shape: Shape,
    engine: E,
    bus: DeviceBus,
    sequence: u64,
}

impl<E: Engine> Machine<E> {
    /// A machine from an engine booted on `shape` and its device bus.
    pub fn new(shape: Shape, engine: E, bus: DeviceBus) -> Machine<E> {
        Machine {
            shape,
            engine,
            bus,
            sequence: 0,
        }
    }

    /// The machine's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The engine, mutably.
    pub fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }

    /// The devices.
    pub fn bus(&mut self) -> &mut DeviceBus {
        &mut self.bus
    }

    /// The last checkpoint taken or restored (boot is 0).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Runs the guest for `budget`.
    pub fn run(&mut self, budget: Instructions) -> Result<RunExit, MachineError> {
        Ok(self.engine.run(&mut self.bus, budget)?)
    }

    /// Whether the vCPUs go on running between runs (see
    /// [`Engine::keep_running`]); turning it off stops them.
    pub fn keep_running(&mut self, keep: bool) -> Result<(), MachineError> {
        self.engine.keep_running(keep);
        if keep {
            Ok(())
        } else {
            self.settle()
        }
    }

    /// Stops any vCPU a run left running. Every operation on the machine's
    /// state (a checkpoint, a restore, a hash) does this first.
    pub fn settle(&mut self) -> Result<(), MachineError> {
        Ok(self.engine.settle(&mut self.bus)?)
    }

    /// Takes a checkpoint of the paused machine. Either kind restarts dirty
    /// tracking, so the next delta holds what changed after this one.
    pub fn checkpoint(&mut self, kind: Kind) -> Result<Checkpoint, MachineError> {
        self.capture(kind, None)
    }

    /// A full checkpoint (every page) that carries of the disk only
    /// `blocks` and the blocks written since the last checkpoint: for a
    /// peer whose disk already holds the rest.
    pub fn checkpoint_with_blocks(
        &mut self,
        blocks: &BTreeSet<u64>,
    ) -> Result<Checkpoint, MachineError> {
        self.capture(Kind::Full, Some(blocks))
    }

    fn capture(
        &mut self,
        kind: Kind,
        only_blocks: Option<&BTreeSet<u64>>,
    ) -> Result<Checkpoint, MachineError> {
        self.settle()?;
        let dirty = self.engine.take_dirty_pages()?;
        let written = self.bus.disk.take_written();
        let page_indices: Vec<PageIndex> = match kind {
            Kind::Full => (0..self.shape.pages()).map(PageIndex).collect(),
            Kind::Delta => dirty,
        };
        let mut pages = Vec::with_capacity(page_indices.len());
        for index in page_indices {
            let mut bytes = vec![0u8; PAGE_SIZE as usize];
            self.engine.read_memory(index.gpa(), &mut bytes)?;
            pages.push((index, bytes));
        }
        let block_numbers: Vec<u64> = match (kind, only_blocks) {
            (Kind::Full, only) => self.full_blocks(only, &written),
            (Kind::Delta, _) => written.into_iter().collect(),
        };
        let mut blocks = Vec::with_capacity(block_numbers.len());
        for block in block_numbers {
            let mut bytes = [0u8; BLOCK_BYTES];
            self.bus.store().read_block(block, &mut bytes)?;
            blocks.push((block, bytes.to_vec()));
        }
        let base_sequence = self.sequence;
        self.sequence += 1;
        Ok(Checkpoint {
            kind,
            sequence: self.sequence,
            base_sequence,
            vcpus: self.shape.vcpus(),
            memory_bytes: self.shape.memory_bytes(),
            pages,
            vcpu_states: self.vcpu_states()?,
            devices: self.save_devices(),
            engine: EngineEnvelope::of(&self.engine).encode(),
            platform: self.bus.save_platform(),
            blocks,
        })
    }

    /// Begins a full checkpoint that is read a part at a time while the
    /// guest runs on (a pre-copy round): [`Machine::stream_full`] until it
    /// says done, then [`Machine::finish_full`]. Pages and blocks are read
    /// as they are then, so the checkpoint alone is not a state the guest
    /// was ever in; but tracking restarts now, so the next delta holds
    /// every page and block written since this call, read or not yet:
    /// this checkpoint and the deltas that follow it give the state at
    /// their end. It carries of the disk `only_blocks` (and the blocks
    /// written since the last checkpoint), or all of it.
    pub fn begin_full(
        &mut self,
        only_blocks: Option<&BTreeSet<u64>>,
    ) -> Result<FullStream, MachineError> {
        self.engine.take_dirty_pages()?;
        let written = self.bus.disk.take_written();
        let blocks = self.full_blocks(only_blocks, &written);
        let pages = self.shape.pages();
        let capacity = 4096
            + pages as usize * (4 + PAGE_SIZE as usize)
            + blocks.len() * (8 + BLOCK_BYTES)
            + usize::from(self.shape.vcpus()) * 512;
        let base_sequence = self.sequence;
        self.sequence += 1;
        let writer = CheckpointWriter::begin(
            Kind::Full,
            self.sequence,
            base_sequence,
            (self.shape.vcpus(), self.shape.memory_bytes()),
            pages,
            capacity,
        )
        .hashing();
        Ok(FullStream {
            writer,
            next_page: 0,
            blocks,
            next_block: None,
        })
    }

    /// Reads up to `pages` more pages (or, once every page is read, as many
    /// disk blocks) into `stream`. True once everything is read.
    pub fn stream_full(
        &mut self,
        stream: &mut FullStream,
        pages: u32,
    ) -> Result<bool, MachineError> {
        let total = self.shape.pages();
        if stream.next_page < total {
            let end = stream.next_page.saturating_add(pages).min(total);
            for index in (stream.next_page..end).map(PageIndex) {
                self.engine
                    .read_memory(index.gpa(), stream.writer.page(index))?;
            }
            stream.next_page = end;
            return Ok(false);
        }
        let next = match stream.next_block {
            Some(next) => next,
            None => {
                // The state between pages and blocks: as it is now (the
                // delta that follows carries it as it is then).
                self.settle()?;
                let states = self.vcpu_states()?;
                let devices = self.save_devices();
                let engine = EngineEnvelope::of(&self.engine).encode();
                let platform = self.bus.save_platform();
                stream.writer.state(&states, &devices, &engine, &platform);
                stream
                    .writer
                    .block_count(u32::try_from(stream.blocks.len()).expect("blocks fit u32"));
                0
            }
        };
        let blocks_per_part = pages as usize * (PAGE_SIZE as usize / BLOCK_BYTES);
        let end = next
            .saturating_add(blocks_per_part)
            .min(stream.blocks.len());
        for &block in &stream.blocks[next..end] {
            let slot: &mut [u8; BLOCK_BYTES] = stream
                .writer
                .block(block)
                .try_into()
                .expect("a block's slot");
            self.bus.store().read_block(block, slot)?;
        }
        stream.next_block = Some(end);
        Ok(end == stream.blocks.len())
    }

    /// The encoded checkpoint of a stream that [`Machine::stream_full`]
    /// has read to its end.
    pub fn finish_full(&mut self, stream: FullStream) -> FullCapture {
        assert_eq!(
            stream.next_block,
            Some(stream.blocks.len()),
            "a stream is finished once read"
        );
        let (bytes, sha256) = stream.writer.finish_hashed();
        FullCapture {
            pages: u64::from(self.shape.pages()),
            blocks: stream.blocks,
            bytes,
            sha256: sha256.expect("a stream hashes as it is read"),
        }
    }

    /// The disk blocks a full checkpoint carries: all of them, or `only`
    /// and the blocks `written` since the last checkpoint.
    fn full_blocks(&mut self, only: Option<&BTreeSet<u64>>, written: &BTreeSet<u64>) -> Vec<u64> {
        match only {
            None => (0..self.bus.store().block_count()).collect(),
            Some(blocks) => blocks.union(written).copied().collect(),
        }
    }

    /// Restores a checkpoint: a full one onto any machine of the same shape,
    /// a delta onto the machine at its base checkpoint.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<(), MachineError> {
        self.restore_ref(&checkpoint.as_ref())
    }

    /// [`Machine::restore`] from a checkpoint decoded in place.
    pub fn restore_ref(&mut self, checkpoint: &CheckpointRef<'_>) -> Result<(), MachineError> {
        if checkpoint.vcpus != self.shape.vcpus()
            || checkpoint.memory_bytes != self.shape.memory_bytes()
        {
            return Err(MachineError::ShapeMismatch {
                vcpus: checkpoint.vcpus,
                memory_bytes: checkpoint.memory_bytes,
            });
        }
        if checkpoint.kind == Kind::Delta && checkpoint.base_sequence != self.sequence {
            return Err(MachineError::WrongBase {
                base: checkpoint.base_sequence,
                current: self.sequence,
            });
        }
        self.settle()?;
        let platform = self.bus.decode_platform(checkpoint.platform)?;
        self.bus.restore(&mut Reader::new(checkpoint.devices))?;
        self.bus.set_platform(platform);
        EngineEnvelope::decode(checkpoint.engine)?.restore_into(&mut self.engine)?;
        for (index, bytes) in &checkpoint.pages {
            self.engine.write_memory(index.gpa(), bytes)?;
        }
        for (i, state) in checkpoint.vcpu_states.iter().enumerate() {
            let vcpu = VcpuId(u16::try_from(i).expect("few vCPUs"));
            self.engine.set_vcpu_state(vcpu, state)?;
        }
        for (block, bytes) in &checkpoint.blocks {
            let bytes: &[u8; BLOCK_BYTES] = (*bytes).try_into().expect("decoder checks");
            self.bus.store().write_block(*block, bytes)?;
        }
        self.engine.take_dirty_pages()?;
        self.bus.disk.take_written();
        self.sequence = checkpoint.sequence;
        Ok(())
    }

    /// Every vCPU's state (of a settled machine: see [`Machine::settle`]).
    pub fn vcpu_states(&self) -> Result<Vec<VcpuState>, MachineError> {
        (0..self.shape.vcpus())
            .map(|v| Ok(self.engine.vcpu_state(VcpuId(v))?))
            .collect()
    }

    fn save_devices(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.bus.save(&mut w);
        w.into_bytes()
    }

    /// A hash of the whole machine state: memory, vCPUs, devices, engine
    /// state and disk blocks. Equal states hash equal.
    pub fn state_hash(&mut self) -> Result<u64, MachineError> {
        self.settle()?;
        let mut hash = Fnv64::default();
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for index in 0..self.shape.pages() {
            self.engine.read_memory(PageIndex(index).gpa(), &mut page)?;
            hash.write(&page);
        }
        let mut w = Writer::new();
        for state in self.vcpu_states()? {
            state.encode(&mut w);
        }
        hash.write(&w.into_bytes());
        hash.write(&self.save_devices());
        hash.write(&self.bus.save_platform());
        hash.write(&self.engine.save_engine_state());
        let mut block = [0u8; BLOCK_BYTES];
        for number in 0..self.bus.store().block_count() {
            self.bus.store().read_block(number, &mut block)?;
            hash.write(&block);
        }
        Ok(hash.finish())
    }
}

use crate::vcpu::VcpuState;

/// A full checkpoint being read while the guest runs: see
/// [`Machine::begin_full`].
#[derive(Debug)]
pub struct FullStream {
    writer: CheckpointWriter,
    next_page: u32,
    blocks: Vec<u64>,
    /// Once the pages are read: the next of `blocks` to read.
    next_block: Option<usize>,
}

impl FullStream {
    /// Bytes of memory the stream's buffer holds.
    pub fn bytes_held(&self) -> usize {
        self.writer.bytes_held()
    }
}

/// A streamed full checkpoint, read to its end.
#[derive(Debug)]
pub struct FullCapture {
    /// The encoded checkpoint.
    pub bytes: Vec<u8>,
    /// The SHA-256 of `bytes`, taken a part at a time as they were read.
    pub sha256: [u8; 32],
    /// Its page count.
    pub pages: u64,
    /// The disk blocks it carries.
    pub blocks: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::IoContext;
    use crate::devices::{MemStore, BLOCK_BYTES};
    use crate::fake::FakeEngine;
    use crate::layout::MEMORY_BYTES_MIN;
    use crate::pc::lapic::{reg, Startup, APIC_BASE_DEFAULT};
    use crate::pc::vectors::Vector;
    use crate::pc::Pc;
    use crate::units::{Gpa, GuestNs};
    use crate::CHECKPOINT_BYTES_MAX;

    fn machine() -> Machine<FakeEngine> {
        let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
        let bus = DeviceBus::new(2, Box::new(MemStore::new(4)));
        Machine::new(shape, FakeEngine::new(&shape), bus)
    }

    #[test]
    fn full_then_deltas_rebuild_the_state_elsewhere() {
        let mut primary = machine();
        let mut backup = machine();
        primary
            .engine_mut()
            .write_memory(Gpa(0x20_0000), &[1; 10])
            .expect("in range");
        primary
            .bus()
            .store()
            .write_block(1, &[7; BLOCK_BYTES])
            .expect("in range");
        let full = primary.checkpoint(Kind::Full).expect("checkpoint");
        assert_eq!(full.pages.len(), 1024);
        assert_eq!(full.blocks.len(), 4);
        backup.restore(&full).expect("restores");
        primary
            .engine_mut()
            .write_memory(Gpa(0x30_0ff8), &[2; 16])
            .expect("in range");
        primary.run(Instructions(5)).expect("runs");
        let delta = primary.checkpoint(Kind::Delta).expect("checkpoint");
        assert_eq!(
            delta.pages.iter().map(|p| p.0 .0).collect::<Vec<_>>(),
            vec![0x300, 0x301]
        );
        let delta = Checkpoint::decode(&delta.encode(), CHECKPOINT_BYTES_MAX).expect("decodes");
        backup.restore(&delta).expect("restores");
        assert_eq!(
            backup.state_hash().expect("hash"),
            primary.state_hash().expect("hash")
        );
        assert_eq!(backup.sequence(), 2);
    }

    fn streamed(
        machine: &mut Machine<FakeEngine>,
        mut between: impl FnMut(&mut Machine<FakeEngine>, u32),
    ) -> FullCapture {
        let mut stream = machine.begin_full(None).expect("begins");
        let mut part = 0;
        while !machine.stream_full(&mut stream, 300).expect("reads") {
            part += 1;
            between(machine, part);
        }
        machine.finish_full(stream)
    }

    #[test]
    fn a_streamed_full_checkpoint_of_a_still_guest_is_the_full_checkpoint() {
        let (mut a, mut b) = (machine(), machine());
        for m in [&mut a, &mut b] {
            m.engine_mut()
                .write_memory(Gpa(0x20_0000), &[1; 10])
                .expect("in range");
            m.bus()
                .store()
                .write_block(3, &[9; BLOCK_BYTES])
                .expect("in range");
        }
        let whole = a.checkpoint(Kind::Full).expect("checkpoint").encode();
        let capture = streamed(&mut b, |_, _| {});
        assert_eq!(capture.pages, 1024);
        assert_eq!(capture.blocks, vec![0, 1, 2, 3]);
        assert!(capture.bytes == whole, "the same bytes, read in parts");
        use sha2::Digest as _;
        let sha256: [u8; 32] = sha2::Sha256::digest(&whole).into();
        assert_eq!(capture.sha256, sha256, "hashed a part at a time");
        let checkpoint = a.checkpoint(Kind::Full).expect("checkpoint");
        let (bytes, hashed) = checkpoint.encode_hashed();
        assert_eq!(hashed, sha2::Sha256::digest(&bytes).as_slice());
    }

    #[test]
    fn a_streamed_full_checkpoint_and_the_next_delta_give_the_state_at_the_delta() {
        let mut primary = machine();
        let mut backup = machine();
        let capture = streamed(&mut primary, |m, part| {
            // Pages already read (100) and not yet read (900) change
            // while the checkpoint is read.
            for page in [100u64, 900] {
                m.engine_mut()
                    .write_memory(Gpa(page * 4096 + 8), &[part as u8 + 1; 8])
                    .expect("in range");
            }
        });
        primary.run(Instructions(5)).expect("runs");
        let full = Checkpoint::decode(&capture.bytes, CHECKPOINT_BYTES_MAX).expect("decodes");
        assert_eq!(full.kind, Kind::Full);
        backup.restore(&full).expect("restores");
        assert_ne!(
            backup.state_hash().expect("hash"),
            primary.state_hash().expect("hash"),
            "alone, a checkpoint read while the guest ran is no state it was in"
        );
        let delta = primary.checkpoint(Kind::Delta).expect("checkpoint");
        let pages: Vec<u32> = delta.pages.iter().map(|p| p.0 .0).collect();
        assert!(pages.contains(&100) && pages.contains(&900), "{pages:?}");
        backup
            .restore(&delta)
            .expect("the delta follows the stream");
        assert_eq!(
            backup.state_hash().expect("hash"),
            primary.state_hash().expect("hash")
        );
    }

    #[test]
    fn a_full_checkpoint_can_carry_only_the_blocks_a_peer_lacks() {
        let mut primary = machine();
        let mut joiner = machine();
        for (block, fill) in [(1, 7), (2, 8)] {
            primary
                .bus()
                .store()
                .write_block(block, &[fill; BLOCK_BYTES])
                .expect("in range");
        }
        // The joiner's disk already holds block 1 (an older checkpoint).
        joiner
            .bus()
            .store()
            .write_block(1, &[7; BLOCK_BYTES])
            .expect("in range");
        let full = primary
            .checkpoint_with_blocks(&BTreeSet::from([2]))
            .expect("checkpoint");
        assert_eq!(full.kind, Kind::Full);
        assert_eq!(full.pages.len(), 1024);
        assert_eq!(
            full.blocks.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
            vec![2]
        );
        joiner.restore(&full).expect("restores");
        assert_eq!(
            joiner.state_hash().expect("hash"),
            primary.state_hash().expect("hash")
        );
    }

    #[test]
    fn a_delta_needs_its_base_and_the_same_shape() {
        let mut primary = machine();
        primary.checkpoint(Kind::Delta).expect("checkpoint");
        let second = primary.checkpoint(Kind::Delta).expect("checkpoint");
        let mut fresh = machine();
        assert!(matches!(
            fresh.restore(&second),
            Err(MachineError::WrongBase {
                base: 1,
                current: 0
            })
        ));
        let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
        let bus = DeviceBus::new(1, Box::new(MemStore::new(4)));
        let mut other = Machine::new(shape, FakeEngine::new(&shape), bus);
        let full = primary.checkpoint(Kind::Full).expect("checkpoint");
        assert!(matches!(
            other.restore(&full),
            Err(MachineError::ShapeMismatch { .. })
        ));
    }

    fn pc_machine() -> Machine<FakeEngine> {
        let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
        let pc = Pc::new(2, Startup::Running);
        let bus = DeviceBus::new(2, Box::new(MemStore::new(4))).with_pc(pc);
        Machine::new(shape, FakeEngine::new(&shape), bus)
    }

    fn apic(machine: &mut Machine<FakeEngine>, now: u64, offset: u32, value: Option<u32>) -> u32 {
        let ctx = IoContext {
            vcpu: VcpuId(1),
            now: GuestNs(now),
        };
        let gpa = Gpa(APIC_BASE_DEFAULT + u64::from(offset));
        let mut data = value.unwrap_or(0).to_le_bytes();
        let decoded = match value {
            Some(_) => machine.bus().mmio_write(ctx, gpa, &data),
            None => machine.bus().mmio_read(ctx, gpa, &mut data),
        };
        assert!(decoded, "the APIC page is the platform's");
        u32::from_le_bytes(data)
    }

    #[test]
    fn the_platform_travels_in_its_section_and_restores_mid_timer() {
        let mut primary = pc_machine();
        apic(&mut primary, 0, reg::SVR, Some(0x1ff));
        apic(&mut primary, 0, reg::TIMER_DIVIDE, Some(0b1011));
        apic(&mut primary, 0, reg::LVT_TIMER, Some(0x2_0040)); // periodic
        apic(&mut primary, 100, reg::TIMER_INITIAL, Some(1_000));
        primary.run(Instructions(400)).expect("runs");
        primary.bus().port_out(
            IoContext {
                vcpu: VcpuId(0),
                now: GuestNs(400),
            },
            0x3f8,
            1,
            u32::from(b'k'),
        );
        assert_eq!(
            primary.bus().console.take(),
            b"k",
            "COM1 writes the console"
        );
        let full = primary.checkpoint(Kind::Full).expect("checkpoint");
        assert!(!full.platform.is_empty());
        let full = Checkpoint::decode(&full.encode(), CHECKPOINT_BYTES_MAX).expect("decodes");
        let mut backup = pc_machine();
        backup.restore(&full).expect("restores");
        assert_eq!(
            backup.state_hash().expect("hash"),
            primary.state_hash().expect("hash")
        );
        for machine in [&mut primary, &mut backup] {
            assert_eq!(apic(machine, 2_350, reg::TIMER_CURRENT, None), 750);
            let pc = machine.bus().pc().expect("a platform");
            assert_eq!(pc.next_deadline(), Some(GuestNs(3_100)));
            assert!(
                pc.lapic(VcpuId(1)).irr().contains(Vector(0x40)),
                "fired at 1100"
            );
        }
        assert_eq!(
            backup.state_hash().expect("hash"),
            primary.state_hash().expect("hash")
        );
    }

    #[test]
    fn platform_state_restores_only_onto_a_machine_with_a_platform() {
        let without = machine().checkpoint(Kind::Full).expect("checkpoint");
        assert!(without.platform.is_empty());
        let error = pc_machine().restore(&without).unwrap_err().to_string();
        assert!(error.contains("no state for it"), "{error}");
        let with = pc_machine().checkpoint(Kind::Full).expect("checkpoint");
        let error = machine().restore(&with).unwrap_err().to_string();
        assert!(error.contains("no platform"), "{error}");
        let mut corrupt = with.clone();
        corrupt.platform.truncate(corrupt.platform.len() - 1);
        let mut target = pc_machine();
        let before = target.state_hash().expect("hash");
        assert!(matches!(
            target.restore(&corrupt),
            Err(MachineError::Decode(DecodeError::Truncated { .. }))
        ));
        assert_eq!(
            target.state_hash().expect("hash"),
            before,
            "nothing changed"
        );
    }

    #[test]
    fn the_hash_sees_memory_disk_and_devices() {
        let mut a = machine();
        let base = a.state_hash().expect("hash");
        a.engine_mut()
            .write_memory(Gpa(0x3f_fff8), &[1])
            .expect("in range");
        let with_memory = a.state_hash().expect("hash");
        assert_ne!(with_memory, base);
        a.bus()
            .store()
            .write_block(3, &[1; BLOCK_BYTES])
            .expect("in range");
        let with_disk = a.state_hash().expect("hash");
        assert_ne!(with_disk, with_memory);
        a.bus().nic.deliver(vec![1]).expect("room");
        assert_ne!(a.state_hash().expect("hash"), with_disk);
    }
}
