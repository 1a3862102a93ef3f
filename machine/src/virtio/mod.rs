//! virtio-mmio devices for the Linux guest (virtio 1.x, "modern"
//! register layout, version 2): a block device over the machine's
//! [`crate::devices::BlockStore`] and a network device over the NIC's
//! packet queues, so that the simulator's disk faults, links and
//! partitions reach an unmodified kernel through the same backends as
//! Lockstep's own guests.
//!
//! Debian's kernel cannot take virtio-mmio devices from its command line
//! (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` is off): it finds them in the
//! ACPI DSDT ([`crate::linux::acpi`]), one `LNRO0005` device per window
//! of [`VirtioSlot`], each with its MMIO window and its I/O APIC pin.

/// Where the first virtio-mmio window is: above guest RAM (1 GiB at most)
/// and below the I/O APIC, where Firecracker puts its windows too.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Bytes of one device's window (its registers and config space).
pub const VIRTIO_MMIO_WINDOW_BYTES: u64 = 0x1000;
/// The I/O APIC pin of the first window: past the 16 ISA interrupts, so
/// no ISA default or override applies to it and it can be level-triggered.
pub const VIRTIO_GSI_BASE: u32 = 16;

/// The virtio-mmio windows of the platform, in window order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VirtioSlot {
    /// virtio-blk.
    Block,
    /// virtio-net.
    Net,
}

impl VirtioSlot {
    /// Every window, in order.
    pub const ALL: [VirtioSlot; 2] = [VirtioSlot::Block, VirtioSlot::Net];

    /// The window's index.
    pub fn index(self) -> u32 {
        self as u32
    }

    /// The window's guest-physical base.
    pub fn base(self) -> u64 {
        VIRTIO_MMIO_BASE + u64::from(self.index()) * VIRTIO_MMIO_WINDOW_BYTES
    }

    /// Its interrupt: an I/O APIC pin, level-triggered, active high.
    pub fn gsi(self) -> u32 {
        VIRTIO_GSI_BASE + self.index()
    }
}

// The windows lie between RAM and the I/O APIC, on pins the I/O APIC has.
const _: () = {
    assert!(VIRTIO_MMIO_BASE >= crate::layout::MEMORY_BYTES_MAX);
    assert!(
        VIRTIO_MMIO_BASE + VirtioSlot::ALL.len() as u64 * VIRTIO_MMIO_WINDOW_BYTES
            <= crate::pc::ioapic::IOAPIC_BASE
    );
    assert!((VIRTIO_GSI_BASE as usize + VirtioSlot::ALL.len()) <= crate::pc::ioapic::IOAPIC_PINS);
};

pub mod block;
pub mod mmio;
pub mod net;
pub mod queue;
#[cfg(test)]
pub(crate) mod testing;

use crate::codec::{DecodeError, Reader, Writer};
use crate::devices::disk::Disk;
use crate::devices::nic::Nic;
use crate::devices::BlockStore;
use block::VirtioBlock;
use net::VirtioNet;

/// Guest memory as the devices reach it: vm-memory's mapping of the
/// engine's RAM, whose bitmap records every page a device writes, so the
/// engine can report those pages dirty to the checkpoint (and drop what
/// it translated from them). Each engine builds one over its own RAM.
pub type GuestMemory = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// What the devices refused or dropped, for the driver to read. Counts,
/// not device state: a checkpoint does not carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceCounts {
    /// Descriptor chains that loop, run past their queue, point outside
    /// guest memory or lack the shape the device needs: returned unused.
    pub chains_malformed: u64,
    /// Block requests answered with an error status (a store failure, a
    /// sector past the disk, an unsupported request).
    pub requests_failed: u64,
    /// Frames dropped: longer than the NIC carries, or than the guest's
    /// receive buffer.
    pub frames_dropped: u64,
    /// Used rings outside guest memory: the device then needs a reset.
    pub queues_broken: u64,
    /// Read requests served into guest memory: the only device writes
    /// that may bring the guest code (a program read from its disk); a
    /// received frame, a used ring or a status byte is data it never
    /// runs.
    pub disk_reads: u64,
}

/// The platform's virtio devices: a disk and a NIC on the machine's
/// backends.
#[derive(Debug)]
pub struct Virtio {
    /// virtio-blk, on the machine's block store.
    pub block: VirtioBlock,
    /// virtio-net, on the machine's NIC.
    pub net: VirtioNet,
    counts: DeviceCounts,
}

/// The tag of the virtio part of the checkpoint's platform section (after
/// the PC's own, [`crate::pc::PART_RTC`]).
pub const PLATFORM_PART_VIRTIO: u8 = 2;

const _: () = assert!(PLATFORM_PART_VIRTIO != crate::pc::PART_RTC);

impl Virtio {
    /// The devices for a disk of `capacity_sectors` and a NIC at `mac`.
    pub fn new(capacity_sectors: u64, mac: [u8; 6]) -> Virtio {
        Virtio {
            block: VirtioBlock::new(capacity_sectors),
            net: VirtioNet::new(mac),
            counts: DeviceCounts::default(),
        }
    }

    /// What the devices refused or dropped so far.
    pub fn counts(&self) -> DeviceCounts {
        self.counts
    }

    /// The window and offset `gpa` falls in.
    pub fn decode(gpa: u64) -> Option<(VirtioSlot, u64)> {
        let offset = gpa.checked_sub(VIRTIO_MMIO_BASE)?;
        let slot = VirtioSlot::ALL
            .into_iter()
            .find(|slot| slot.index() as u64 == offset / VIRTIO_MMIO_WINDOW_BYTES)?;
        Some((slot, offset % VIRTIO_MMIO_WINDOW_BYTES))
    }

    /// A guest read in window `slot`.
    pub fn mmio_read(&mut self, slot: VirtioSlot, offset: u64, data: &mut [u8]) {
        match slot {
            VirtioSlot::Block => {
                let config = self.block.config();
                self.block.transport_mut().read(offset, data, &config);
            }
            VirtioSlot::Net => {
                let config = self.net.config();
                self.net.transport_mut().read(offset, data, &config);
            }
        }
    }

    /// A guest write in window `slot`.
    pub fn mmio_write(&mut self, slot: VirtioSlot, offset: u64, data: &[u8]) {
        match slot {
            VirtioSlot::Block => self.block.transport_mut().write(offset, data),
            VirtioSlot::Net => self.net.transport_mut().write(offset, data),
        }
    }

    /// Whether [`Virtio::service`] has work: a queue was notified, or a
    /// packet waits and the NIC's receive queue is live.
    pub fn wants_service(&self, nic: &Nic) -> bool {
        self.block.transport().notified()
            || self.net.transport().notified()
            || self.net.rx_pending(nic)
    }

    /// Serves the notified queues and delivers waiting packets, on behalf
    /// of `vcpu` (whose notification it was: the store's time is its).
    /// Every guest write goes through `mem`.
    pub fn service(
        &mut self,
        mem: &GuestMemory,
        store: &mut dyn BlockStore,
        disk: &mut Disk,
        nic: &mut Nic,
        vcpu: usize,
    ) {
        self.block.service(mem, store, disk, vcpu, &mut self.counts);
        self.net.service(mem, nic, &mut self.counts);
    }

    /// Each window's interrupt pin and whether it is asserted.
    pub fn lines(&self) -> [(VirtioSlot, bool); 2] {
        [
            (
                VirtioSlot::Block,
                self.block.transport().interrupt_asserted(),
            ),
            (VirtioSlot::Net, self.net.transport().interrupt_asserted()),
        ]
    }

    /// Appends the devices' state (their transports: the devices hold no
    /// other state between requests).
    pub fn save(&self, w: &mut Writer) {
        self.block.transport().save(w);
        self.net.transport().save(w);
    }

    /// Decodes saved devices into these (the same disk and MAC): the
    /// whole of `r`.
    pub fn restore(&mut self, r: &mut Reader<'_>) -> Result<(), DecodeError> {
        self.block.transport_mut().restore(r)?;
        self.net.transport_mut().restore(r)?;
        r.finish()
    }
}
