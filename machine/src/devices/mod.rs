//! Devices: deterministic state machines reached by port I/O through the
//! [`DeviceBus`], which the machine owns and every engine calls into.
//!
//! Port map (all accesses 32-bit unless noted):
//!
//! | port  | dir | device  | meaning |
//! |-------|-----|---------|---------|
//! | 0x3f8 | out | console | one byte (8-bit access) |
//! | 0x500 | in  | NIC     | pop the next rx packet into this vCPU's rx slot; returns its length, 0 if none |
//! | 0x504 | in  | NIC     | next 4 bytes of this vCPU's rx slot |
//! | 0x508 | out | NIC     | append 4 bytes to this vCPU's tx slot |
//! | 0x50c | out | NIC     | send this vCPU's tx slot truncated to the value's length |
//! | 0x520 | out | disk    | select block for this vCPU |
//! | 0x524 | out | disk    | command: 1 read block into buffer, 2 write buffer to block |
//! | 0x528 | out | disk    | buffer offset (bytes) for the data port |
//! | 0x52c | in/out | disk | 4 bytes at the buffer offset, offset += 4 |
//! | 0x530 | in  | disk    | status of the last command: 0 ok, 1 error |
//! | 0x540 | in  | clock   | latch now (ns) for this vCPU, return the low 32 bits |
//! | 0x544 | in  | clock   | high 32 bits of the latched time |
//! | 0x548 | out | clock   | wake this vCPU from `hlt` after the value in ns |
//! | 0x560 | out | doorbell| wake the vCPUs whose bits are set in the value |
//! | 0x570 | out | done    | the guest reports a result (compute guest) |
//!
//! A machine with the PC platform ([`crate::pc`]) has a 16550A UART on
//! COM1 (0x3f8..=0x3ff) instead of the plain console port; what it sends
//! goes to the same console; the CMOS RTC answers ports 0x70 and 0x71.
//! Its APIC pages are reached by MMIO
//! ([`DeviceBus::mmio_read`], [`DeviceBus::mmio_write`]).
//!
//! Each vCPU has its own NIC slots, disk buffer and clock latch, so vCPUs do
//! not interleave inside one multi-port transfer.

pub mod bus;
pub mod console;
pub mod disk;
pub mod file;
pub mod integrity;
pub mod nic;

pub use bus::{DeviceBus, IoContext};
pub use disk::{BlockStore, MemStore, SharedStore, StoreError, BLOCK_BYTES};
pub use file::{FileStore, FileStoreError, LABEL_BYTES};
pub use integrity::{IntegrityStats, IntegrityStore, Verify};
pub use nic::{Packet, PACKET_BYTES_MAX, RX_QUEUE_MAX};

/// Console output port.
pub const PORT_CONSOLE: u16 = 0x3f8;
/// NIC: pop rx packet.
pub const PORT_NIC_RX_POP: u16 = 0x500;
/// NIC: rx data.
pub const PORT_NIC_RX_DATA: u16 = 0x504;
/// NIC: tx data.
pub const PORT_NIC_TX_DATA: u16 = 0x508;
/// NIC: tx send.
pub const PORT_NIC_TX_SEND: u16 = 0x50c;
/// Disk: block select.
pub const PORT_DISK_BLOCK: u16 = 0x520;
/// Disk: command.
pub const PORT_DISK_CMD: u16 = 0x524;
/// Disk: buffer offset.
pub const PORT_DISK_OFFSET: u16 = 0x528;
/// Disk: data.
pub const PORT_DISK_DATA: u16 = 0x52c;
/// Disk: status.
pub const PORT_DISK_STATUS: u16 = 0x530;
/// Clock: latch and read low half.
pub const PORT_CLOCK_LO: u16 = 0x540;
/// Clock: read high half.
pub const PORT_CLOCK_HI: u16 = 0x544;
/// Clock: relative wake deadline.
pub const PORT_CLOCK_WAKE: u16 = 0x548;
/// Doorbell.
pub const PORT_DOORBELL: u16 = 0x560;
/// Guest result report.
pub const PORT_DONE: u16 = 0x570;
/// Disk command: read block into buffer.
pub const DISK_CMD_READ: u32 = 1;
/// Disk command: write buffer to block.
pub const DISK_CMD_WRITE: u32 = 2;
