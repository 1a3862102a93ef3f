//! virtio-net (virtio 1.2, section 5.1) over the machine's NIC: the
//! guest's transmitted frames go to the NIC's tx queue and the NIC's rx
//! packets into the buffers the guest posts, so the simulator's links,
//! partitions and NIC faults reach the Linux guest through the same
//! queues as Lockstep's own guests. No offloads: one frame per buffer
//! chain, each behind the 12-byte `virtio_net_hdr_v1` (all zero but
//! `num_buffers` = 1 on receive). The MAC is the machine's.

use virtio_queue::QueueOwnedT;
use vm_memory::Bytes;

use super::block::write_across;
use super::mmio::Transport;
use super::queue::{add_used, check_range, pop_chain, Chain, ChainError};
use super::{DeviceCounts, GuestMemory};
use crate::devices::nic::Nic;

/// The virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// VIRTIO_NET_F_MAC: the configuration's `mac` is the device's address.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Each queue's size.
pub const NET_QUEUE_SIZE: u16 = 256;
/// The queues: the guest's receive buffers, its frames to send.
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const NET_HEADER_BYTES: usize = 12;
/// The MTU in the configuration (not negotiated: VIRTIO_NET_F_MTU is not
/// offered; it says what the NIC's frame limit allows).
const MTU: u16 = 1500;

/// A virtio network device.
#[derive(Debug)]
pub struct VirtioNet {
    transport: Transport,
    mac: [u8; 6],
}

impl VirtioNet {
    /// A network device with address `mac`.
    pub fn new(mac: [u8; 6]) -> VirtioNet {
        VirtioNet {
            transport: Transport::new(VIRTIO_ID_NET, VIRTIO_NET_F_MAC, &[NET_QUEUE_SIZE; 2]),
            mac,
        }
    }

    /// Its address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Its transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Its transport, mutably.
    pub fn transport_mut(&mut self) -> &mut Transport {
        &mut self.transport
    }

    /// The configuration space: mac, status (not offered), one queue
    /// pair, the MTU.
    pub fn config(&self) -> [u8; 12] {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&MTU.to_le_bytes());
        config
    }

    /// Whether a packet waits that a posted buffer could take.
    pub fn rx_pending(&self, nic: &Nic) -> bool {
        self.transport.queue_live(RX_QUEUE) && nic.rx_len() > 0
    }

    /// Sends the frames the guest queued, then moves waiting packets into
    /// the guest's receive buffers.
    pub fn service(&mut self, mem: &GuestMemory, nic: &mut Nic, counts: &mut DeviceCounts) {
        let notified = self.transport.take_notified();
        let mut signal = false;
        if notified & (1 << TX_QUEUE) != 0 && self.transport.queue_live(TX_QUEUE) {
            signal |= self.transmit(mem, nic, counts);
        }
        if self.transport.queue_live(RX_QUEUE) {
            signal |= self.receive(mem, nic, counts);
        }
        if signal {
            self.transport.signal_used();
        }
    }

    /// Returns a chain used; false (and the device needing a reset) if the
    /// used ring is not in guest memory.
    fn used(
        &mut self,
        queue: usize,
        mem: &GuestMemory,
        head: u16,
        len: u32,
        counts: &mut DeviceCounts,
    ) -> Option<bool> {
        match add_used(self.transport.queue_mut(queue), mem, head, len) {
            Ok(wants) => Some(wants),
            Err(_) => {
                counts.queues_broken += 1;
                self.transport.needs_reset();
                None
            }
        }
    }

    fn transmit(&mut self, mem: &GuestMemory, nic: &mut Nic, counts: &mut DeviceCounts) -> bool {
        let mut signal = false;
        for _ in 0..NET_QUEUE_SIZE {
            let Some(popped) = pop_chain(self.transport.queue_mut(TX_QUEUE), mem) else {
                break;
            };
            let head = match popped {
                Ok(chain) => {
                    match frame_of(mem, &chain, nic.packet_bytes_max()) {
                        Ok(Some(frame)) => nic.send(frame),
                        Ok(None) => counts.frames_dropped += 1,
                        Err(_) => counts.chains_malformed += 1,
                    }
                    chain.head
                }
                Err((head, _)) => {
                    counts.chains_malformed += 1;
                    head
                }
            };
            match self.used(TX_QUEUE, mem, head, 0, counts) {
                Some(wants) => signal |= wants,
                None => break,
            }
        }
        signal
    }

    fn receive(&mut self, mem: &GuestMemory, nic: &mut Nic, counts: &mut DeviceCounts) -> bool {
        let mut signal = false;
        while let Some(len) = nic.rx_front().map(Vec::len) {
            let Some(popped) = pop_chain(self.transport.queue_mut(RX_QUEUE), mem) else {
                break;
            };
            let (head, written) = match popped {
                Ok(chain) => match receive_room(mem, &chain) {
                    Ok(room) if room < NET_HEADER_BYTES + len => {
                        // Too long for the guest's buffer: the packet goes,
                        // the buffer stays for the next one.
                        nic.rx_take();
                        counts.frames_dropped += 1;
                        self.transport.queue_mut(RX_QUEUE).go_to_previous_position();
                        continue;
                    }
                    Ok(_) => {
                        let packet = nic.rx_take().expect("a packet waits");
                        let written = deliver(mem, &chain, &packet).unwrap_or_else(|_| {
                            counts.chains_malformed += 1;
                            0
                        });
                        (chain.head, written)
                    }
                    Err(_) => {
                        counts.chains_malformed += 1;
                        (chain.head, 0)
                    }
                },
                Err((head, _)) => {
                    counts.chains_malformed += 1;
                    (head, 0)
                }
            };
            match self.used(RX_QUEUE, mem, head, written, counts) {
                Some(wants) => signal |= wants,
                None => break,
            }
        }
        signal
    }
}

/// The frame a transmit chain carries (its readable buffers, the header
/// stripped), or None if it is longer than the NIC carries.
fn frame_of(
    mem: &GuestMemory,
    chain: &Chain,
    frame_bytes_max: usize,
) -> Result<Option<Vec<u8>>, ChainError> {
    let mut bytes = Vec::new();
    for descriptor in chain.readable() {
        check_range(mem, chain.head, descriptor)?;
        let len = descriptor.len() as usize;
        if bytes.len() + len > NET_HEADER_BYTES + frame_bytes_max {
            return Ok(None);
        }
        let at = bytes.len();
        bytes.resize(at + len, 0);
        mem.read_slice(&mut bytes[at..], descriptor.addr())
            .map_err(|_| chain.shape("a buffer cannot be read"))?;
    }
    if bytes.len() < NET_HEADER_BYTES {
        return Err(chain.shape("no virtio-net header"));
    }
    Ok(Some(bytes.split_off(NET_HEADER_BYTES)))
}

/// The bytes a receive chain holds: writable buffers only, in memory.
fn receive_room(mem: &GuestMemory, chain: &Chain) -> Result<usize, ChainError> {
    if chain.readable().next().is_some() {
        return Err(chain.shape("a receive buffer the device cannot write"));
    }
    let mut room = 0usize;
    for descriptor in chain.writable() {
        check_range(mem, chain.head, descriptor)?;
        room += descriptor.len() as usize;
    }
    Ok(room)
}

/// Writes the header and `packet` into the chain: the bytes written.
fn deliver(
    mem: &GuestMemory,
    chain: &Chain,
    packet: &[u8],
) -> Result<u32, vm_memory::GuestMemoryError> {
    let mut bytes = vec![0u8; NET_HEADER_BYTES];
    bytes[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
    bytes.extend_from_slice(packet);
    let buffers: Vec<_> = chain.writable().copied().collect();
    write_across(mem, &buffers, &bytes)
}

#[cfg(test)]
mod tests;
