use super::*;
use crate::devices::{MemStore, StoreError};
use crate::virtio::mmio::{reg, INTERRUPT_USED_BUFFER};
use crate::virtio::testing::{activate, add_chain, memory, read32, used, write32, BUFFERS, WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Bytes;

const HEADER: u64 = BUFFERS;
const STATUS: u64 = BUFFERS + 0x100;
const DATA: u64 = BUFFERS + 0x1000;

/// A store that fails every I/O, as an injected disk fault does.
#[derive(Debug)]
struct FailingStore;

impl BlockStore for FailingStore {
    fn block_count(&self) -> u64 {
        8
    }
    fn read_block(&mut self, _: u64, _: &mut [u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        Err(StoreError::Io("injected".into()))
    }
    fn write_block(&mut self, _: u64, _: &[u8; BLOCK_BYTES]) -> Result<(), StoreError> {
        Err(StoreError::Io("injected".into()))
    }
    fn flush(&mut self) -> Result<(), StoreError> {
        Err(StoreError::Io("injected".into()))
    }
}

/// A driver, a device and its store.
struct Rig<'a> {
    mem: &'a GuestMemory,
    mock: MockSplitQueue<'a, GuestMemory>,
    device: VirtioBlock,
    store: Box<dyn BlockStore>,
    disk: Disk,
    counts: DeviceCounts,
    next: u16,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemory, store: Box<dyn BlockStore>) -> Rig<'a> {
        let mock = MockSplitQueue::new(mem, 64);
        let mut device = VirtioBlock::new(store.block_count());
        activate(device.transport_mut(), VIRTIO_BLK_F_FLUSH, &[&mock]);
        Rig {
            mem,
            mock,
            device,
            store,
            disk: Disk::new(1),
            counts: DeviceCounts::default(),
            next: 0,
        }
    }

    /// A request of `kind` at `sector` with these data buffers, served:
    /// (status byte, used length).
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, u16)]) -> (u8, u32) {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&header, GuestAddress(HEADER))
            .expect("in memory");
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS))
            .expect("in memory");
        let mut chain = vec![(HEADER, 16, 0)];
        chain.extend_from_slice(data);
        chain.push((STATUS, 1, WRITE));
        let len = self.submit(&chain);
        (
            self.mem.read_obj(GuestAddress(STATUS)).expect("in memory"),
            len,
        )
    }

    /// Makes `chain` available, notifies, serves: its used length.
    fn submit(&mut self, chain: &[(u64, u32, u16)]) -> u32 {
        let head = self.next;
        add_chain(&self.mock, head, chain);
        self.next += chain.len() as u16;
        write32(self.device.transport_mut(), reg::QUEUE_NOTIFY, 0);
        self.device.service(
            self.mem,
            self.store.as_mut(),
            &mut self.disk,
            0,
            &mut self.counts,
        );
        let idx = self.mock.used().idx().load();
        let (_, id, len) = used(&self.mock, idx - 1);
        assert_eq!(id, u32::from(head), "the request's head came back");
        len
    }
}

fn store_with_pattern(blocks: u64) -> MemStore {
    let mut store = MemStore::new(blocks);
    for block in 0..blocks {
        store
            .write_block(block, &[block as u8 + 1; BLOCK_BYTES])
            .expect("in range");
    }
    store
}

#[test]
fn reads_sectors_into_the_guests_buffers() {
    let mem = memory();
    let mut rig = Rig::new(&mem, Box::new(store_with_pattern(8)));
    assert_eq!(&rig.device.config()[..8], &8u64.to_le_bytes(), "capacity");
    let data = [(DATA, 1024, WRITE), (DATA + 0x2000, 512, WRITE)];
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 2, &data),
        (VIRTIO_BLK_S_OK, 1536 + 1)
    );
    let mut bytes = vec![0u8; 1024];
    mem.read_slice(&mut bytes, GuestAddress(DATA))
        .expect("in memory");
    assert_eq!(&bytes[..512], &[3; 512][..], "sector 2");
    assert_eq!(&bytes[512..], &[4; 512][..], "sector 3");
    mem.read_slice(&mut bytes[..512], GuestAddress(DATA + 0x2000))
        .expect("in memory");
    assert_eq!(&bytes[..512], &[5; 512][..], "sector 4, in the next buffer");
    let t = rig.device.transport_mut();
    assert_eq!(read32(t, reg::INTERRUPT_STATUS), INTERRUPT_USED_BUFFER);
    assert!(t.interrupt_asserted());
    let one_read = DeviceCounts {
        disk_reads: 1,
        ..DeviceCounts::default()
    };
    assert_eq!(rig.counts, one_read, "one read, nothing refused");
}

#[test]
fn writes_reach_the_store_and_the_delta_and_flush_and_get_id_answer() {
    let mem = memory();
    let mut rig = Rig::new(&mem, Box::new(MemStore::new(8)));
    mem.write_slice(&[0xab; 1024], GuestAddress(DATA))
        .expect("in memory");
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, 5, &[(DATA, 1024, 0)]),
        (VIRTIO_BLK_S_OK, 1)
    );
    let mut block = [0u8; BLOCK_BYTES];
    for n in [5, 6] {
        rig.store.read_block(n, &mut block).expect("in range");
        assert_eq!(block, [0xab; BLOCK_BYTES], "block {n}");
    }
    assert_eq!(
        rig.disk.take_written().into_iter().collect::<Vec<_>>(),
        vec![5, 6]
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
        (VIRTIO_BLK_S_OK, 1)
    );
    let (status, len) = rig.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, WRITE)]);
    assert_eq!((status, len), (VIRTIO_BLK_S_OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA))
        .expect("in memory");
    assert_eq!(&id, DEVICE_ID);
}

#[test]
fn store_failures_past_the_end_and_unknown_requests_are_error_statuses() {
    let mem = memory();
    let mut rig = Rig::new(&mem, Box::new(FailingStore));
    let read = [(DATA, 512, WRITE)];
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 0, &read),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, 0)]),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(
        rig.disk.errors(),
        3,
        "the disk's error count, as for its ports"
    );
    assert!(rig.disk.written().is_empty());
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 8, &read),
        (VIRTIO_BLK_S_IOERR, 1),
        "past the end"
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 100, WRITE)]),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, WRITE)]),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(rig.request(99, 0, &[]), (VIRTIO_BLK_S_UNSUPP, 1));
    assert_eq!(rig.counts.requests_failed, 7);
    assert_eq!(rig.counts.chains_malformed, 0);
}

#[test]
fn a_malformed_request_is_returned_unanswered_and_counted() {
    let mem = memory();
    let mut rig = Rig::new(&mem, Box::new(MemStore::new(8)));
    // The status buffer readable; the header writable; a lone header; a
    // data buffer past the end of memory.
    assert_eq!(rig.submit(&[(HEADER, 16, 0), (STATUS, 1, 0)]), 0);
    assert_eq!(rig.submit(&[(HEADER, 16, WRITE), (STATUS, 1, WRITE)]), 0);
    assert_eq!(rig.submit(&[(HEADER, 16, 0)]), 0);
    let beyond = crate::virtio::testing::MEMORY_BYTES as u64;
    assert_eq!(
        rig.submit(&[(HEADER, 16, 0), (beyond, 512, WRITE), (STATUS, 1, WRITE)]),
        0
    );
    assert_eq!(rig.counts.chains_malformed, 4);
    // The device goes on.
    assert_eq!(
        rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
        (VIRTIO_BLK_S_OK, 1)
    );
}
