//! virtio-blk (virtio 1.2, section 5.2) over the machine's disk: the same
//! [`BlockStore`] as the port disk, with its failure modes, and the same
//! bookkeeping (written blocks for the checkpoint delta, errors, store
//! time), so a disk fault the simulator arms reaches the Linux guest as
//! VIRTIO_BLK_S_IOERR. 512-byte sectors are the store's blocks.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::mmio::Transport;
use super::queue::{add_used, check_range, pop_chain, Chain, ChainError};
use super::{DeviceCounts, GuestMemory};
use crate::devices::disk::Disk;
use crate::devices::{BlockStore, BLOCK_BYTES};

/// The virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// VIRTIO_BLK_F_SEG_MAX: `seg_max` in the configuration is valid.
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_FLUSH: the device takes flush requests (the guest's
/// fsync reaches the store's flush).
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
/// The request queue's size.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Most data buffers in a request: what fits the queue with the header
/// and status descriptors (no indirect descriptors are offered).
const SEG_MAX: u32 = 126;
/// Request types.
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request status.
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;
/// The request header: type, reserved, sector.
const HEADER_BYTES: u32 = 16;
/// GET_ID's answer: at most 20 bytes, NUL-padded.
const DEVICE_ID: &[u8; 20] = b"lockstep-disk\0\0\0\0\0\0\0";

/// A virtio block device.
#[derive(Debug)]
pub struct VirtioBlock {
    transport: Transport,
    capacity_sectors: u64,
}

/// What one request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    kind: u32,
    sector: u64,
}

impl VirtioBlock {
    /// A block device of `capacity_sectors` 512-byte sectors.
    pub fn new(capacity_sectors: u64) -> VirtioBlock {
        VirtioBlock {
            transport: Transport::new(
                VIRTIO_ID_BLOCK,
                VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH,
                &[BLOCK_QUEUE_SIZE],
            ),
            capacity_sectors,
        }
    }

    /// Its transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Its transport, mutably.
    pub fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// The configuration space: capacity, size_max (none), seg_max,
    /// geometry (none), blk_size.
    pub fn config(&self) -> [u8; 24] {
        let mut config = [0u8; 24];
        config[..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        config
    }

    /// Serves every available request of the notified queue; `counts`
    /// gets the malformed chains and failed requests.
    pub fn service(
        &mut self,
        mem: &GuestMemory,
        store: &mut dyn BlockStore,
        disk: &mut Disk,
        vcpu: usize,
        counts: &mut DeviceCounts,
    ) {
        if self.transport.take_notified() == 0 || !self.transport.queue_live(0) {
            return;
        }
        let mut signal = false;
        // At most one pass over the queue: the driver may add more while
        // this runs only between runs, so the loop ends.
        for _ in 0..BLOCK_QUEUE_SIZE {
            let queue = self.transport.queue_mut(0);
            let Some(popped) = pop_chain(queue, mem) else {
                break;
            };
            let (head, written) = match popped {
                Ok(chain) => {
                    let written = self.serve(mem, store, disk, vcpu, &chain, counts);
                    (chain.head, written)
                }
                Err((head, _)) => {
                    counts.chains_malformed += 1;
                    (head, 0)
                }
            };
            match add_used(self.transport.queue_mut(0), mem, head, written) {
                Ok(wants) => signal |= wants,
                Err(_) => {
                    counts.queues_broken += 1;
                    self.transport.needs_reset();
                    break;
                }
            }
        }
        if signal {
            self.transport.signal_used();
        }
    }

    /// One request: the bytes written into its writable buffers (the
    /// status byte included), or 0 for a chain too malformed to answer.
    fn serve(
        &self,
        mem: &GuestMemory,
        store: &mut dyn BlockStore,
        disk: &mut Disk,
        vcpu: usize,
        chain: &Chain,
        counts: &mut DeviceCounts,
    ) -> u32 {
        let parsed = parse(mem, chain).map(|(request, data, status)| {
            let read = request.kind == VIRTIO_BLK_T_IN;
            let outcome = self.execute(mem, store, disk, vcpu, request, data);
            counts.disk_reads += u64::from(read && outcome.is_ok());
            (outcome, status)
        });
        match parsed {
            Ok((Ok(data_written), status)) => finish(mem, status, VIRTIO_BLK_S_OK, data_written),
            Ok((Err(code), status)) => {
                counts.requests_failed += 1;
                finish(mem, status, code, 0)
            }
            Err(_) => {
                counts.chains_malformed += 1;
                0
            }
        }
    }

    /// Performs a parsed request: the data bytes written to the guest, or
    /// the status that says why not.
    fn execute(
        &self,
        mem: &GuestMemory,
        store: &mut dyn BlockStore,
        disk: &mut Disk,
        vcpu: usize,
        request: Request,
        data: &[Descriptor],
    ) -> Result<u32, u8> {
        match request.kind {
            VIRTIO_BLK_T_IN => {
                self.check_sectors(request.sector, data, true)?;
                let mut buf = [0u8; BLOCK_BYTES];
                for_each_sector(request.sector, data, |block, addr| {
                    disk.read_through(vcpu, store, block, &mut buf)
                        .map_err(|_| VIRTIO_BLK_S_IOERR)?;
                    mem.write_slice(&buf, addr).map_err(|_| VIRTIO_BLK_S_IOERR)
                })
            }
            VIRTIO_BLK_T_OUT => {
                self.check_sectors(request.sector, data, false)?;
                let mut buf = [0u8; BLOCK_BYTES];
                for_each_sector(request.sector, data, |block, addr| {
                    mem.read_slice(&mut buf, addr)
                        .map_err(|_| VIRTIO_BLK_S_IOERR)?;
                    disk.write_through(vcpu, store, block, &buf)
                        .map_err(|_| VIRTIO_BLK_S_IOERR)
                })
                .map(|_| 0)
            }
            VIRTIO_BLK_T_FLUSH => disk
                .flush_through(vcpu, store)
                .map(|()| 0)
                .map_err(|_| VIRTIO_BLK_S_IOERR),
            VIRTIO_BLK_T_GET_ID => {
                if data.iter().any(|d| !d.is_write_only()) {
                    return Err(VIRTIO_BLK_S_IOERR);
                }
                write_across(mem, data, DEVICE_ID).map_err(|_| VIRTIO_BLK_S_IOERR)
            }
            _ => Err(VIRTIO_BLK_S_UNSUPP),
        }
    }

    /// The data buffers go the right way, hold whole sectors (less than
    /// 4 GiB of them: a used length is 32 bits), and the sectors are on
    /// the disk.
    fn check_sectors(&self, sector: u64, data: &[Descriptor], into_guest: bool) -> Result<(), u8> {
        let bytes: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let wrong_way = data.iter().any(|d| d.is_write_only() != into_guest);
        let end = sector.checked_add(bytes / BLOCK_BYTES as u64);
        if wrong_way
            || bytes > u64::from(u32::MAX)
            || bytes % BLOCK_BYTES as u64 != 0
            || end.is_none_or(|e| e > self.capacity_sectors)
        {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        Ok(())
    }
}

/// The request's header, its data buffers and its status buffer: the
/// header alone in the first (readable) descriptor, the status byte last
/// (writable), every buffer inside guest memory.
fn parse<'c>(
    mem: &GuestMemory,
    chain: &'c Chain,
) -> Result<(Request, &'c [Descriptor], GuestAddress), ChainError> {
    for descriptor in &chain.descriptors {
        check_range(mem, chain.head, descriptor)?;
    }
    let [first, data @ .., last] = chain.descriptors.as_slice() else {
        return Err(chain.shape("a request needs a header and a status"));
    };
    if first.is_write_only() || first.len() < HEADER_BYTES {
        return Err(chain.shape("the header is not readable or short"));
    }
    if !last.is_write_only() || last.len() < 1 {
        return Err(chain.shape("the status is not writable"));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    mem.read_slice(&mut header, first.addr())
        .map_err(|_| chain.shape("the header cannot be read"))?;
    let request = Request {
        kind: u32::from_le_bytes(header[..4].try_into().expect("4 bytes")),
        sector: u64::from_le_bytes(header[8..].try_into().expect("8 bytes")),
    };
    // The status byte is the last of its buffer.
    let status = GuestAddress(last.addr().0 + u64::from(last.len()) - 1);
    Ok((request, data, status))
}

/// Writes the status byte: the used length, data and status.
fn finish(mem: &GuestMemory, status: GuestAddress, code: u8, data_written: u32) -> u32 {
    match mem.write_obj(code, status) {
        Ok(()) => data_written + 1,
        Err(_) => 0,
    }
}

/// Calls `each` with every sector from `sector` on and the guest address
/// of its bytes in the buffers, in order: the bytes of the buffers. A
/// sector split across two buffers is refused (the kernel never splits
/// one: its segments are whole sectors).
fn for_each_sector(
    sector: u64,
    data: &[Descriptor],
    mut each: impl FnMut(u64, GuestAddress) -> Result<(), u8>,
) -> Result<u32, u8> {
    let mut block = sector;
    for descriptor in data {
        if descriptor.len() % BLOCK_BYTES as u32 != 0 {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        for i in 0..u64::from(descriptor.len()) / BLOCK_BYTES as u64 {
            each(
                block,
                GuestAddress(descriptor.addr().0 + i * BLOCK_BYTES as u64),
            )?;
            block += 1;
        }
    }
    let bytes = (block - sector) * BLOCK_BYTES as u64;
    Ok(u32::try_from(bytes).expect("the buffers are checked below 4 GiB"))
}

/// Writes `bytes` across the buffers in order, as far as they hold: the
/// bytes written.
pub(crate) fn write_across(
    mem: &GuestMemory,
    buffers: &[Descriptor],
    bytes: &[u8],
) -> Result<u32, vm_memory::GuestMemoryError> {
    let mut done = 0usize;
    for descriptor in buffers {
        if done == bytes.len() {
            break;
        }
        let take = (descriptor.len() as usize).min(bytes.len() - done);
        mem.write_slice(&bytes[done..done + take], descriptor.addr())?;
        done += take;
    }
    Ok(u32::try_from(done).expect("buffers are below 4 GiB"))
}

#[cfg(test)]
mod tests;
