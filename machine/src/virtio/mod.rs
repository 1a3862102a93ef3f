//! The virtio-mmio windows of the Linux PC: where a block device and a
//! network device will be (virtio 1.x, "modern" register layout), so that
//! the ACPI tables can declare them.
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
