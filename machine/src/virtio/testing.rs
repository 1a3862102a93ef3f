//! A virtio driver for the devices' tests: negotiates as Linux does,
//! lays its queues out with virtio-queue's mock rings, and reads back
//! what the device used.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::mmio::{reg, status, Transport, VIRTIO_F_VERSION_1};
use super::GuestMemory;

/// The tests' guest memory.
pub const MEMORY_BYTES: usize = 1 << 20;
/// Where the tests' buffers start (the rings lie below).
pub const BUFFERS: u64 = 0x4_0000;
/// VRING_DESC_F_NEXT and VRING_DESC_F_WRITE.
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;

pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEMORY_BYTES)]).expect("test memory")
}

pub fn read32(t: &mut Transport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data, &[]);
    u32::from_le_bytes(data)
}

pub fn write32(t: &mut Transport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, the driver's features, FEATURES_OK: whether the
/// device kept FEATURES_OK.
pub fn negotiate(t: &mut Transport, features: u64) -> bool {
    write32(t, reg::STATUS, u32::from(status::ACKNOWLEDGE));
    write32(
        t,
        reg::STATUS,
        u32::from(status::ACKNOWLEDGE | status::DRIVER),
    );
    for sel in 0..2u32 {
        write32(t, reg::DRIVER_FEATURES_SEL, sel);
        write32(t, reg::DRIVER_FEATURES, (features >> (32 * sel)) as u32);
    }
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    write32(t, reg::STATUS, u32::from(ok));
    read32(t, reg::STATUS) & u32::from(status::FEATURES_OK) != 0
}

/// Programs queue `index` with the mock's rings, ready.
pub fn setup_queue(t: &mut Transport, index: u32, mock: &MockSplitQueue<'_, GuestMemory>) {
    let q: Queue = mock.create_queue().expect("mock queue");
    write32(t, reg::QUEUE_SEL, index);
    write32(t, reg::QUEUE_NUM, u32::from(q.size()));
    for (low, addr) in [
        (reg::QUEUE_DESC_LOW, q.desc_table()),
        (reg::QUEUE_DRIVER_LOW, q.avail_ring()),
        (reg::QUEUE_DEVICE_LOW, q.used_ring()),
    ] {
        write32(t, low, addr as u32);
        write32(t, low + 4, (addr >> 32) as u32);
    }
    write32(t, reg::QUEUE_READY, 1);
}

/// VERSION_1 negotiated, `queues` set up, DRIVER_OK.
pub fn activate(t: &mut Transport, features: u64, queues: &[&MockSplitQueue<'_, GuestMemory>]) {
    assert!(negotiate(t, features | VIRTIO_F_VERSION_1));
    for (i, mock) in queues.iter().enumerate() {
        setup_queue(t, i as u32, mock);
    }
    let status = read32(t, reg::STATUS) | u32::from(status::DRIVER_OK);
    write32(t, reg::STATUS, status);
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Adds a chain of `buffers` (address, length, flags without NEXT) at
/// descriptor `first` and makes it available.
pub fn add_chain(mock: &MockSplitQueue<'_, GuestMemory>, first: u16, buffers: &[(u64, u32, u16)]) {
    let last = buffers.len() - 1;
    let descs: Vec<_> = buffers
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let next = if i == last { 0 } else { NEXT };
            desc(addr, len, flags | next, first + i as u16 + 1)
        })
        .collect();
    mock.add_desc_chains(&descs, first).expect("fits the table");
}

/// The used ring's index and its element `i` (head, length).
pub fn used(mock: &MockSplitQueue<'_, GuestMemory>, i: u16) -> (u16, u32, u32) {
    let idx = mock.used().idx().load();
    let elem = mock
        .used()
        .ring()
        .ref_at(usize::from(i))
        .expect("in the ring")
        .load();
    (idx, elem.id(), elem.len())
}
