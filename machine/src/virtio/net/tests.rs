use super::*;
use crate::devices::nic::FRAME_BYTES_MAX;
use crate::virtio::mmio::reg;
use crate::virtio::testing::{activate, add_chain, memory, used, write32, BUFFERS, WRITE};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// A receive buffer as Linux posts it without mergeable buffers: the
/// header and a 1518-byte frame (VLAN tag included).
const RX_BUFFER_BYTES: u32 = 12 + 1518;

struct Rig<'a> {
    mem: &'a GuestMemory,
    rx: MockSplitQueue<'a, GuestMemory>,
    tx: MockSplitQueue<'a, GuestMemory>,
    device: VirtioNet,
    nic: Nic,
    counts: DeviceCounts,
    rx_next: u16,
    tx_next: u16,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemory) -> Rig<'a> {
        let rx = MockSplitQueue::create(mem, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let mut device = VirtioNet::new(MAC);
        activate(device.transport_mut(), VIRTIO_NET_F_MAC, &[&rx, &tx]);
        Rig {
            mem,
            rx,
            tx,
            device,
            nic: Nic::new(1).with_packet_bytes_max(FRAME_BYTES_MAX),
            counts: DeviceCounts::default(),
            rx_next: 0,
            tx_next: 0,
        }
    }

    fn serve(&mut self) {
        self.device
            .service(self.mem, &mut self.nic, &mut self.counts);
    }

    /// Posts a receive buffer of `len` bytes at `addr`.
    fn post(&mut self, addr: u64, len: u32) {
        add_chain(&self.rx, self.rx_next, &[(addr, len, WRITE)]);
        self.rx_next += 1;
    }

    /// Sends `frame` behind a zero header, in two buffers as Linux does
    /// (header, then the frame), and notifies.
    fn send(&mut self, frame: &[u8]) {
        let at = BUFFERS + 0x8000 + u64::from(self.tx_next) * 0x1000;
        self.mem
            .write_slice(&[0; NET_HEADER_BYTES], GuestAddress(at))
            .expect("in memory");
        self.mem
            .write_slice(frame, GuestAddress(at + 0x100))
            .expect("in memory");
        let chain = [
            (at, NET_HEADER_BYTES as u32, 0),
            (at + 0x100, frame.len() as u32, 0),
        ];
        add_chain(&self.tx, self.tx_next, &chain);
        self.tx_next += 2;
        write32(
            self.device.transport_mut(),
            reg::QUEUE_NOTIFY,
            TX_QUEUE as u32,
        );
        self.serve();
    }
}

#[test]
fn the_configuration_has_the_machines_mac() {
    let device = VirtioNet::new(MAC);
    assert_eq!(&device.config()[..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([device.config()[10], device.config()[11]]),
        1500
    );
}

#[test]
fn transmitted_frames_reach_the_nics_tx_queue_without_their_header() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    let frame: Vec<u8> = (0..1514u32).map(|i| i as u8).collect();
    rig.send(&frame);
    rig.send(&[7; 60]);
    assert_eq!(rig.nic.take_tx(), vec![frame, vec![7; 60]]);
    let (idx, head, len) = used(&rig.tx, 1);
    assert_eq!((idx, head, len), (2, 2, 0));
    assert!(rig.device.transport().interrupt_asserted());
    // One byte past the NIC's limit: dropped, counted, the buffer returned.
    rig.send(&[1; FRAME_BYTES_MAX + 1]);
    assert!(rig.nic.take_tx().is_empty());
    assert_eq!(rig.counts.frames_dropped, 1);
    assert_eq!(rig.tx.used().idx().load(), 3);
}

#[test]
fn received_packets_fill_posted_buffers_behind_a_header() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    rig.nic.deliver(vec![9; 100]).expect("room");
    rig.serve();
    assert_eq!(rig.nic.rx_len(), 1, "no buffer posted: the packet waits");
    assert!(rig.device.rx_pending(&rig.nic));
    rig.post(BUFFERS, RX_BUFFER_BYTES);
    rig.post(BUFFERS + 0x1000, RX_BUFFER_BYTES);
    rig.nic.deliver(vec![8; 1514]).expect("room");
    rig.serve();
    assert_eq!(rig.nic.rx_len(), 0);
    assert_eq!(used(&rig.rx, 0), (2, 0, 12 + 100));
    assert_eq!(used(&rig.rx, 1), (2, 1, 12 + 1514));
    let mut header = [0u8; NET_HEADER_BYTES];
    mem.read_slice(&mut header, GuestAddress(BUFFERS))
        .expect("in memory");
    assert_eq!(
        header,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "num_buffers 1"
    );
    let mut packet = [0u8; 100];
    mem.read_slice(&mut packet, GuestAddress(BUFFERS + 12))
        .expect("in memory");
    assert_eq!(packet, [9; 100]);
    assert!(rig.device.transport().interrupt_asserted());
}

#[test]
fn a_packet_too_long_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    rig.post(BUFFERS, 12 + 64);
    rig.nic.deliver(vec![1; 65]).expect("room");
    rig.nic.deliver(vec![2; 64]).expect("room");
    rig.serve();
    assert_eq!(rig.counts.frames_dropped, 1);
    assert_eq!(
        used(&rig.rx, 0),
        (1, 0, 12 + 64),
        "the second packet in the kept buffer"
    );
    // A receive buffer the device may not write is malformed.
    add_chain(&rig.rx, 1, &[(BUFFERS, 100, 0)]);
    rig.nic.deliver(vec![3; 10]).expect("room");
    rig.serve();
    assert_eq!(rig.counts.chains_malformed, 1);
    assert_eq!(used(&rig.rx, 1), (2, 1, 0));
    assert_eq!(rig.nic.rx_len(), 1, "the packet waits for a good buffer");
}
