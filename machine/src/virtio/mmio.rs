//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the
//! register window a driver negotiates through (status, feature words,
//! queue setup, QueueNotify, the interrupt status and its acknowledge,
//! the configuration generation) in front of a device's configuration
//! space. It holds the queues' registers ([`virtio_queue::Queue`]) and
//! which queues were notified; the device model serves them
//! ([`super::Virtio::service`]).

use virtio_queue::{Queue, QueueT};

use super::queue::{restore_queue, save_queue};
use crate::codec::{DecodeError, Reader, Writer};

/// "virt", little-endian.
const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (non-legacy) register layout.
const VERSION: u32 = 2;
/// Lockstep's vendor id in the window ("LKST"): any value is allowed.
const VENDOR_ID: u32 = 0x5453_4b4c;

/// Register offsets.
#[allow(missing_docs)]
pub(crate) mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u8 = 4;
    /// The driver's features are accepted.
    pub const FEATURES_OK: u8 = 8;
    /// The device failed and needs a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up.
    pub const FAILED: u8 = 128;
}

/// VIRTIO_F_VERSION_1: the device is modern; required of every driver.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// InterruptStatus: a queue has new used buffers.
pub const INTERRUPT_USED_BUFFER: u32 = 1;
/// InterruptStatus: the configuration changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;
/// The most queues a transport has (virtio-net's two).
pub const QUEUES_MAX: usize = 2;

/// Counts of what the transport ignored, for the driver to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransportStats {
    /// Register accesses that were not 32-bit, or beyond the registers,
    /// or to a queue that does not exist, or that changed a live queue.
    pub accesses_ignored: u64,
    /// FEATURES_OK refused: the driver asked for a feature the device
    /// does not offer, or not for VIRTIO_F_VERSION_1.
    pub features_refused: u64,
}

/// One device's virtio-mmio registers and queues.
#[derive(Debug)]
pub struct Transport {
    device_id: u32,
    device_features: u64,
    driver_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<Queue>,
    status: u8,
    interrupt_status: u32,
    config_generation: u32,
    /// Bit n: queue n was notified and not yet served.
    notified: u32,
    stats: TransportStats,
}

impl Transport {
    /// The transport of a device `device_id` offering `device_features`
    /// (VIRTIO_F_VERSION_1 is added) with queues of these maximum sizes.
    pub fn new(device_id: u32, device_features: u64, queue_sizes_max: &[u16]) -> Transport {
        assert!(!queue_sizes_max.is_empty() && queue_sizes_max.len() <= QUEUES_MAX);
        let queues = queue_sizes_max
            .iter()
            .map(|&max| Queue::new(max).expect("a power of two up to 32768"))
            .collect();
        Transport {
            device_id,
            device_features: device_features | VIRTIO_F_VERSION_1,
            driver_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            notified: 0,
            stats: TransportStats::default(),
        }
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Whether the driver finished its setup: the queues may be used.
    pub fn driver_ok(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::FAILED == 0
    }

    /// The features both sides agreed on (once FEATURES_OK).
    pub fn acked_features(&self) -> u64 {
        self.driver_features
    }

    /// What the transport ignored.
    pub fn stats(&self) -> TransportStats {
        self.stats
    }

    /// The queues.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// Queue `index`, to serve it.
    pub fn queue_mut(&mut self, index: usize) -> &mut Queue {
        &mut self.queues[index]
    }

    /// Whether queue `index` is set up and the driver is ready.
    pub fn queue_live(&self, index: usize) -> bool {
        self.driver_ok() && self.queues.get(index).is_some_and(|q| q.ready())
    }

    /// The queues notified since the last call, as a bit set, if the
    /// device is live (notifications before DRIVER_OK are dropped).
    pub fn take_notified(&mut self) -> u32 {
        let notified = std::mem::take(&mut self.notified);
        if self.driver_ok() {
            notified
        } else {
            0
        }
    }

    /// Whether a notified queue waits to be served.
    pub fn notified(&self) -> bool {
        self.notified != 0 && self.driver_ok()
    }

    /// The device used buffers the driver asked to hear of.
    pub fn signal_used(&mut self) {
        self.interrupt_status |= INTERRUPT_USED_BUFFER;
    }

    /// The device failed in a way only a reset repairs (the driver sees
    /// DEVICE_NEEDS_RESET and a configuration change interrupt).
    pub fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt_status |= INTERRUPT_CONFIG_CHANGE;
    }

    /// The interrupt line: high while InterruptStatus is not zero.
    pub fn interrupt_asserted(&self) -> bool {
        self.interrupt_status != 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let queue = self.queues.get_mut(self.queue_sel as usize);
        if queue.is_none() {
            self.stats.accesses_ignored += 1;
        }
        queue
    }

    /// A guest read at `offset` in the window; `config` is the device's
    /// configuration space (read at any width).
    pub fn read(&mut self, offset: u64, data: &mut [u8], config: &[u8]) {
        data.fill(0);
        if let Some(at) = offset.checked_sub(reg::CONFIG) {
            read_config(config, at, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            self.stats.accesses_ignored += 1;
            return;
        }
        let value = self.register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn register(&mut self, offset: u64) -> u32 {
        let word = |value: u64, sel: u32| match sel {
            0 => value as u32,
            1 => (value >> 32) as u32,
            _ => 0,
        };
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device_id,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => word(self.device_features, self.device_features_sel),
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => u32::from(self.status),
            // No shared memory regions: their length reads all ones.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.stats.accesses_ignored += 1;
                0
            }
        }
    }

    /// A guest write at `offset` in the window. Configuration space is
    /// read-only here (neither device has a writable field).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG || data.len() != 4 || offset % 4 != 0 {
            self.stats.accesses_ignored += 1;
            return;
        }
        let value = u32::from_le_bytes(data.try_into().expect("4 bytes"));
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.write_status(value as u8),
            _ => self.write_queue(offset, value),
        }
    }

    fn notify(&mut self, queue: u32) {
        if (queue as usize) < self.queues.len() {
            self.notified |= 1 << queue;
        } else {
            self.stats.accesses_ignored += 1;
        }
    }

    /// Feature words may change only between DRIVER and FEATURES_OK.
    fn write_driver_features(&mut self, value: u32) {
        if self.status & status::FEATURES_OK != 0 || self.driver_features_sel > 1 {
            self.stats.accesses_ignored += 1;
            return;
        }
        let shift = 32 * self.driver_features_sel;
        self.driver_features &= !(0xffff_ffffu64 << shift);
        self.driver_features |= u64::from(value) << shift;
    }

    /// The queue registers, which change only while the queue is not ready.
    fn write_queue(&mut self, offset: u64, value: u32) {
        let Some(queue) = self.selected_queue() else {
            return;
        };
        let live = queue.ready();
        match offset {
            reg::QUEUE_READY => queue.set_ready(value == 1),
            _ if live => self.stats.accesses_ignored += 1,
            reg::QUEUE_NUM => queue.set_size(value as u16),
            reg::QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            reg::QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            reg::QUEUE_DRIVER_LOW => queue.set_avail_ring_address(Some(value), None),
            reg::QUEUE_DRIVER_HIGH => queue.set_avail_ring_address(None, Some(value)),
            reg::QUEUE_DEVICE_LOW => queue.set_used_ring_address(Some(value), None),
            reg::QUEUE_DEVICE_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => self.stats.accesses_ignored += 1,
        }
    }

    /// 0 resets the device; FEATURES_OK is kept only for features the
    /// device offers, VIRTIO_F_VERSION_1 among them (the driver reads it
    /// back to see whether they were accepted).
    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & status::FEATURES_OK != 0 && !self.features_acceptable() {
            self.stats.features_refused += 1;
            value &= !status::FEATURES_OK;
        }
        // The device's own bit is not the driver's to set or clear.
        self.status =
            (value & !status::DEVICE_NEEDS_RESET) | (self.status & status::DEVICE_NEEDS_RESET);
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// Back to the state at power-up (the stats stay: they are counts).
    pub fn reset(&mut self) {
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.status = 0;
        self.interrupt_status = 0;
        self.notified = 0;
    }

    /// Appends the transport's state.
    pub fn save(&self, w: &mut Writer) {
        w.u64(self.driver_features);
        w.u32(self.device_features_sel);
        w.u32(self.driver_features_sel);
        w.u32(self.queue_sel);
        w.u8(self.status);
        w.u32(self.interrupt_status);
        w.u32(self.config_generation);
        w.u32(self.notified);
        w.u64(self.stats.accesses_ignored);
        w.u64(self.stats.features_refused);
        w.u32(u32::try_from(self.queues.len()).expect("at most 2"));
        for queue in &self.queues {
            save_queue(queue, w);
        }
    }

    /// Decodes a saved transport into this one (same device, same
    /// queues), changing nothing on error.
    pub fn restore(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        let mut back = Transport {
            device_id: self.device_id,
            device_features: self.device_features,
            driver_features: r.u64()?,
            device_features_sel: r.u32()?,
            driver_features_sel: r.u32()?,
            queue_sel: r.u32()?,
            queues: Vec::new(),
            status: r.u8()?,
            interrupt_status: r.u32()?,
            config_generation: r.u32()?,
            notified: r.u32()?,
            stats: TransportStats {
                accesses_ignored: r.u64()?,
                features_refused: r.u64()?,
            },
        };
        let count = r.count(QUEUES_MAX)?;
        if count != self.queues.len() {
            return Err(DecodeError::Invalid(format!(
                "virtio device {} has {} queues, the state {count}",
                self.device_id,
                self.queues.len()
            )));
        }
        for queue in &self.queues {
            back.queues.push(restore_queue(r, queue.max_size())?);
        }
        let invalid = |what: &str| Err(DecodeError::Invalid(format!("virtio {what}")));
        if back.driver_features & !back.device_features != 0 {
            return invalid("driver features the device does not offer");
        }
        if back.notified >> back.queues.len() != 0 || back.interrupt_status > 3 {
            return invalid("notified queue or interrupt status out of range");
        }
        *self = back;
        Ok(())
    }
}

/// Copies the configuration bytes at `at` into `data` (zeros past them).
fn read_config(config: &[u8], at: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        let index = usize::try_from(at).ok().and_then(|a| a.checked_add(i));
        *byte = index.and_then(|i| config.get(i)).copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests;
