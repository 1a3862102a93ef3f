use super::*;
use crate::virtio::testing::{activate, memory, negotiate, read32, write32};
use virtio_queue::mock::MockSplitQueue;

fn transport() -> Transport {
    Transport::new(2, 1 << 9, &[16])
}

#[test]
fn the_window_names_a_modern_device_and_offers_version_1() {
    let mut t = transport();
    assert_eq!(read32(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read32(&mut t, reg::VERSION), 2);
    assert_eq!(read32(&mut t, reg::DEVICE_ID), 2);
    assert_eq!(read32(&mut t, reg::DEVICE_FEATURES), 1 << 9);
    write32(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        read32(&mut t, reg::DEVICE_FEATURES),
        1,
        "VERSION_1 is bit 32"
    );
    write32(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(read32(&mut t, reg::DEVICE_FEATURES), 0);
    write32(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 16);
    write32(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(read32(&mut t, reg::QUEUE_NUM_MAX), 0, "no second queue");
    assert_eq!(t.stats().accesses_ignored, 1);
}

#[test]
fn features_ok_needs_version_1_and_only_offered_features() {
    let mut t = transport();
    assert!(!negotiate(&mut t, 1 << 9), "a legacy driver");
    assert_eq!(t.stats().features_refused, 1);
    let mut t = transport();
    assert!(
        !negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 5),
        "a feature not offered"
    );
    let mut t = transport();
    assert!(negotiate(&mut t, VIRTIO_F_VERSION_1 | 1 << 9));
    assert_eq!(t.acked_features(), VIRTIO_F_VERSION_1 | 1 << 9);
    // Features are fixed from FEATURES_OK on.
    write32(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    write32(&mut t, reg::DRIVER_FEATURES, 0);
    assert_eq!(t.acked_features(), VIRTIO_F_VERSION_1 | 1 << 9);
}

#[test]
fn queues_are_set_up_while_not_ready_and_notified_once_live() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let mut t = transport();
    write32(&mut t, reg::QUEUE_NOTIFY, 0);
    assert_eq!(t.take_notified(), 0, "before DRIVER_OK a notify is dropped");
    activate(&mut t, 1 << 9, &[&mock]);
    assert!(t.driver_ok());
    assert!(t.queue_live(0));
    let q = &t.queues()[0];
    assert_eq!(q.size(), 16);
    assert!(q.is_valid(&mem));
    // A live queue's registers do not change.
    write32(&mut t, reg::QUEUE_SEL, 0);
    write32(&mut t, reg::QUEUE_DESC_LOW, 0x1234);
    assert_eq!(t.queues()[0].desc_table(), mock.desc_table_addr().0);
    write32(&mut t, reg::QUEUE_NOTIFY, 0);
    write32(&mut t, reg::QUEUE_NOTIFY, 5);
    assert!(t.notified());
    assert_eq!(t.take_notified(), 1);
    assert_eq!(t.take_notified(), 0);
    assert_eq!(t.stats().accesses_ignored, 2, "the live address, queue 5");
}

#[test]
fn the_interrupt_is_a_level_until_acknowledged_and_reset_clears_everything() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let mut t = transport();
    activate(&mut t, 0, &[&mock]);
    t.signal_used();
    assert!(t.interrupt_asserted());
    assert_eq!(read32(&mut t, reg::INTERRUPT_STATUS), INTERRUPT_USED_BUFFER);
    write32(&mut t, reg::INTERRUPT_ACK, INTERRUPT_USED_BUFFER);
    assert!(!t.interrupt_asserted());
    t.needs_reset();
    assert_eq!(read32(&mut t, reg::CONFIG_GENERATION), 1);
    assert_ne!(
        read32(&mut t, reg::STATUS) & u32::from(status::DEVICE_NEEDS_RESET),
        0
    );
    write32(&mut t, reg::STATUS, 0);
    assert_eq!(read32(&mut t, reg::STATUS), 0);
    assert!(!t.interrupt_asserted());
    assert!(!t.queues()[0].ready());
    assert_eq!(t.acked_features(), 0);
}

#[test]
fn registers_are_32_bit_and_config_reads_at_any_width() {
    let mut t = transport();
    let config = [1u8, 2, 3, 4, 5];
    let mut byte = [0u8; 1];
    t.read(reg::MAGIC_VALUE, &mut byte, &config);
    assert_eq!(byte, [0]);
    t.write(reg::STATUS, &[1]);
    assert_eq!(t.status(), 0);
    assert_eq!(t.stats().accesses_ignored, 2);
    let mut two = [0u8; 2];
    t.read(reg::CONFIG + 3, &mut two, &config);
    assert_eq!(two, [4, 5]);
    let mut past = [0xffu8; 4];
    t.read(reg::CONFIG + 4, &mut past, &config);
    assert_eq!(past, [5, 0, 0, 0]);
}

fn saved(t: &Transport) -> Vec<u8> {
    let mut w = Writer::new();
    t.save(&mut w);
    w.into_bytes()
}

#[test]
fn state_round_trips_and_corrupt_state_is_refused() {
    let mem = memory();
    let mock = MockSplitQueue::new(&mem, 16);
    let mut t = transport();
    activate(&mut t, 1 << 9, &[&mock]);
    write32(&mut t, reg::QUEUE_NOTIFY, 0);
    t.signal_used();
    let bytes = saved(&t);
    let mut back = transport();
    back.restore(&mut Reader::new(&bytes)).expect("decodes");
    assert_eq!(saved(&back), bytes);
    assert!(back.queue_live(0));
    assert_eq!(back.take_notified(), 1);
    for len in 0..bytes.len() {
        let mut fresh = transport();
        let mut r = Reader::new(&bytes[..len]);
        assert!(fresh.restore(&mut r).is_err(), "truncated at {len}");
        assert_eq!(saved(&fresh), saved(&transport()), "unchanged on error");
    }
    // Features the device does not offer; a queue bigger than its max.
    let mut features = bytes.clone();
    features[0] |= 1 << 5;
    assert!(transport().restore(&mut Reader::new(&features)).is_err());
    let queue_at = 8 + 4 * 3 + 1 + 4 * 3 + 8 * 2 + 4;
    let mut size = bytes.clone();
    size[queue_at..queue_at + 2].copy_from_slice(&64u16.to_le_bytes());
    assert!(transport().restore(&mut Reader::new(&size)).is_err());
    let mut ready = bytes;
    ready[queue_at + 2] = 2;
    assert!(transport().restore(&mut Reader::new(&ready)).is_err());
}
