//! The disk: a block device over a backing store the caller provides. Each
//! vCPU has a block register, a one-block buffer and a cursor into it.

use std::collections::BTreeSet;

use crate::codec::{DecodeError, Reader, Writer};

/// Bytes per disk block.
pub const BLOCK_BYTES: usize = 512;

/// Error from a backing store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Block number past the end of the store.
    #[error("block {0} out of range")]
    OutOfRange(u64),
    /// The store failed the I/O.
    #[error("I/O error: {0}")]
    Io(String),
    /// The block's contents do not match its checksum, however often it
    /// was read (or written back).
    #[error("block {0} is corrupt (checksum mismatch)")]
    Corrupt(u64),
}

/// Where the disk's blocks live: memory in tests, a file or a simulated
/// file elsewhere.
pub trait BlockStore: std::fmt::Debug {
    /// Number of blocks.
    fn block_count(&self) -> u64;
    /// Reads one block.
    fn read_block(&mut self, block: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), StoreError>;
    /// Writes one block. It may sit in a volatile cache until
    /// [`flush`](Self::flush).
    fn write_block(&mut self, block: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), StoreError>;
    /// Makes every write so far durable (fsync): a crash after this loses
    /// none of them.
    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Time the store's I/O took since the last call, in simulated
    /// nanoseconds, for an engine that models time to charge it to the
    /// vCPU or host that waited. A store whose I/O takes real time says 0.
    fn take_busy_ns(&mut self) -> u64 {
        0
    }
}

/// A store shared between the machine, which does the guest's I/O through
/// it, and its owner, who keeps a handle to reach the store underneath (to
/// arm faults in the simulator, to label a file disk on a real host) and to
/// keep it across the machine's end.
#[derive(Debug)]
pub struct SharedStore<S: BlockStore>(pub std::rc::Rc<std::cell::RefCell<S>>);

impl<S: BlockStore> BlockStore for SharedStore<S> {
    fn block_count(&self) -> u64 {
        self.0.borrow().block_count()
    }

    fn read_block(&mut self, block: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        self.0.borrow_mut().read_block(block, buf)
    }

    fn write_block(&mut self, block: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        self.0.borrow_mut().write_block(block, buf)
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.0.borrow_mut().flush()
    }

    fn take_busy_ns(&mut self) -> u64 {
        self.0.borrow_mut().take_busy_ns()
    }
}

/// A block store in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemStore {
    bytes: Vec<u8>,
}

impl MemStore {
    /// A zeroed store of `blocks` blocks.
    pub fn new(blocks: u64) -> MemStore {
        let len = usize::try_from(blocks).expect("store fits memory") * BLOCK_BYTES;
        MemStore {
            bytes: vec![0; len],
        }
    }

    /// All bytes of the store.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn range(&self, block: u64) -> Result<std::ops::Range<usize>, StoreError> {
        if block >= self.block_count() {
            return Err(StoreError::OutOfRange(block));
        }
        let start = usize::try_from(block).expect("checked above") * BLOCK_BYTES;
        Ok(start..start + BLOCK_BYTES)
    }
}

impl BlockStore for MemStore {
    fn block_count(&self) -> u64 {
        (self.bytes.len() / BLOCK_BYTES) as u64
    }

    fn read_block(&mut self, block: u64, buf: &mut [u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        let range = self.range(block)?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write_block(&mut self, block: u64, buf: &[u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        let range = self.range(block)?;
        self.bytes[range].copy_from_slice(buf);
        Ok(())
    }
}

/// Result of the last disk command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskStatus {
    /// Succeeded (or no command yet).
    Ok = 0,
    /// Failed: bad block, bad command or store error.
    Error = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Channel {
    block: u64,
    buffer: Box<[u8; BLOCK_BYTES]>,
    cursor: usize,
    status: DiskStatus,
}

/// The disk device's registers (the blocks live in the store). The set
/// of blocks written since the last checkpoint is bookkeeping for deltas,
/// like dirty pages, and not part of the saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    channels: Vec<Channel>,
    written: BTreeSet<u64>,
    /// Commands the store failed, since this disk was made or restored (a
    /// host-side count for the driver, not device state).
    errors: u64,
    /// Per vCPU: store time its commands took, not yet charged to it
    /// (host-side, not guest state: no checkpoint carries it).
    busy_ns: Vec<u64>,
}

impl Disk {
    /// A disk with one channel per vCPU.
    pub fn new(vcpus: u16) -> Disk {
        let channel = Channel {
            block: 0,
            buffer: Box::new([0; BLOCK_BYTES]),
            cursor: 0,
            status: DiskStatus::Ok,
        };
        Disk {
            channels: vec![channel; usize::from(vcpus)],
            written: BTreeSet::new(),
            errors: 0,
            busy_ns: vec![0; usize::from(vcpus)],
        }
    }

    /// Commands the store failed since the disk was made or restored: the
    /// node driver stops a host whose disk fails.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The blocks written since the last checkpoint.
    pub fn written(&self) -> &BTreeSet<u64> {
        &self.written
    }

    /// Takes the numbers of the blocks written since the last call.
    pub fn take_written(&mut self) -> BTreeSet<u64> {
        std::mem::take(&mut self.written)
    }

    /// Takes the store time `vcpu`'s commands took since the last call:
    /// an engine that models time keeps the vCPU waiting that long.
    pub fn take_busy_ns(&mut self, vcpu: usize) -> u64 {
        self.busy_ns.get_mut(vcpu).map_or(0, std::mem::take)
    }

    pub(crate) fn select(&mut self, vcpu: usize, block: u32) {
        self.channels[vcpu].block = u64::from(block);
    }

    pub(crate) fn set_offset(&mut self, vcpu: usize, offset: u32) {
        self.channels[vcpu].cursor = (offset as usize).min(BLOCK_BYTES);
    }

    pub(crate) fn status(&self, vcpu: usize) -> u32 {
        self.channels[vcpu].status as u32
    }

    pub(crate) fn data_in(&mut self, vcpu: usize) -> u32 {
        let channel = &mut self.channels[vcpu];
        let mut word = [0u8; 4];
        if channel.cursor + 4 <= BLOCK_BYTES {
            word.copy_from_slice(&channel.buffer[channel.cursor..channel.cursor + 4]);
            channel.cursor += 4;
        }
        u32::from_le_bytes(word)
    }

    pub(crate) fn data_out(&mut self, vcpu: usize, value: u32) {
        let channel = &mut self.channels[vcpu];
        if channel.cursor + 4 <= BLOCK_BYTES {
            channel.buffer[channel.cursor..channel.cursor + 4]
                .copy_from_slice(&value.to_le_bytes());
            channel.cursor += 4;
        }
    }

    pub(crate) fn command(&mut self, vcpu: usize, command: u32, store: &mut dyn BlockStore) {
        // A copy of the channel's buffer: the store reads into it and the
        // accounting below borrows the whole disk.
        let block = self.channels[vcpu].block;
        let mut buffer = *self.channels[vcpu].buffer;
        let result = match command {
            super::DISK_CMD_READ => self.read_through(vcpu, store, block, &mut buffer),
            super::DISK_CMD_WRITE => self.write_through(vcpu, store, block, &buffer),
            other => {
                self.errors += 1;
                Err(StoreError::Io(format!("unknown command {other}")))
            }
        };
        let channel = &mut self.channels[vcpu];
        *channel.buffer = buffer;
        channel.status = match result {
            Ok(()) => DiskStatus::Ok,
            Err(_) => DiskStatus::Error,
        };
    }

    /// Reads `block` from the store for `vcpu` (the port disk's channel or
    /// virtio-blk): the store time is charged to the vCPU, a failure
    /// counted.
    pub(crate) fn read_through(
        &mut self,
        vcpu: usize,
        store: &mut dyn BlockStore,
        block: u64,
        buf: &mut [u8; BLOCK_BYTES],
    ) -> Result<(), StoreError> {
        let result = store.read_block(block, buf);
        self.account(vcpu, store, &result);
        result
    }

    /// Writes `block` to the store for `vcpu`; a block written goes into
    /// the checkpoint delta's set.
    pub(crate) fn write_through(
        &mut self,
        vcpu: usize,
        store: &mut dyn BlockStore,
        block: u64,
        buf: &[u8; BLOCK_BYTES],
    ) -> Result<(), StoreError> {
        let result = store.write_block(block, buf);
        if result.is_ok() {
            self.written.insert(block);
        }
        self.account(vcpu, store, &result);
        result
    }

    /// Flushes the store for `vcpu` (the guest's own flush: virtio-blk's).
    pub(crate) fn flush_through(
        &mut self,
        vcpu: usize,
        store: &mut dyn BlockStore,
    ) -> Result<(), StoreError> {
        let result = store.flush();
        self.account(vcpu, store, &result);
        result
    }

    fn account(
        &mut self,
        vcpu: usize,
        store: &mut dyn BlockStore,
        result: &Result<(), StoreError>,
    ) {
        let busy = store.take_busy_ns();
        self.busy_ns[vcpu] = self.busy_ns[vcpu].saturating_add(busy);
        if result.is_err() {
            self.errors += 1;
        }
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        for channel in &self.channels {
            w.u64(channel.block);
            w.raw(&channel.buffer[..]);
            w.u32(u32::try_from(channel.cursor).expect("cursor within block"));
            w.u8(channel.status as u8);
        }
    }

    pub(crate) fn restore(r: &mut Reader<'_>, vcpus: u16) -> Result<Disk, DecodeError> {
        let mut disk = Disk::new(vcpus);
        for channel in &mut disk.channels {
            channel.block = r.u64()?;
            channel.buffer.copy_from_slice(r.raw(BLOCK_BYTES)?);
            channel.cursor = r.u32()? as usize;
            if channel.cursor > BLOCK_BYTES {
                return Err(DecodeError::Invalid("disk cursor".into()));
            }
            channel.status = match r.u8()? {
                0 => DiskStatus::Ok,
                1 => DiskStatus::Error,
                other => return Err(DecodeError::Invalid(format!("disk status {other}"))),
            };
        }
        Ok(disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{DISK_CMD_READ, DISK_CMD_WRITE};

    #[test]
    fn write_then_read_through_the_store() {
        let mut store = MemStore::new(4);
        let mut disk = Disk::new(1);
        disk.select(0, 2);
        disk.set_offset(0, 8);
        disk.data_out(0, 0xdead_beef);
        disk.command(0, DISK_CMD_WRITE, &mut store);
        assert_eq!(disk.status(0), 0);
        assert_eq!(
            &store.bytes()[2 * 512 + 8..2 * 512 + 12],
            &[0xef, 0xbe, 0xad, 0xde]
        );
        let mut other = Disk::new(1);
        other.select(0, 2);
        other.command(0, DISK_CMD_READ, &mut store);
        other.set_offset(0, 8);
        assert_eq!(other.data_in(0), 0xdead_beef);
        assert_eq!(disk.take_written().into_iter().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn out_of_range_block_sets_error_status() {
        let mut store = MemStore::new(1);
        let mut disk = Disk::new(1);
        disk.select(0, 5);
        disk.command(0, DISK_CMD_READ, &mut store);
        assert_eq!(disk.status(0), DiskStatus::Error as u32);
    }
}
