//! The I/O APIC (version 0x20, 24 pins): IOREGSEL/IOWIN at its page, the
//! ID, version and arbitration registers and the redirection table. A pin
//! that fires becomes a [`Message`] the platform routes to local APICs;
//! a level-triggered pin stays quiet (remote IRR) until the EOI of its
//! vector comes back.

use super::message::{DeliveryMode, Destination, Level, Message, TriggerMode};
use super::vectors::Vector;
use crate::codec::{DecodeError, Reader, Writer};

/// Where the I/O APIC's registers are.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The size of the window the platform decodes for it.
pub const IOAPIC_WINDOW_BYTES: u64 = 0x1000;
/// Interrupt input pins.
pub const IOAPIC_PINS: usize = 24;
/// The version register: version 0x20 (it has the EOI register) and the
/// highest redirection entry, 23.
pub const IOAPIC_VERSION: u32 = 0x20 | ((IOAPIC_PINS as u32 - 1) << 16);
/// Offset of IOREGSEL: which register IOWIN reaches.
pub const IOREGSEL: u32 = 0x00;
/// Offset of IOWIN: the selected register.
pub const IOWIN: u32 = 0x10;
/// Offset of the EOI register: a write ends the level-triggered
/// interrupts of the vector written (as the local APIC's broadcast does).
pub const IOAPIC_EOI: u32 = 0x40;

/// Redirection entry bits.
const MASKED: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const ACTIVE_LOW: u64 = 1 << 13;
/// The writable bits: vector, delivery mode, destination mode, polarity,
/// trigger mode, mask and destination. Delivery status (bit 12) reads 0:
/// a message is delivered as it is sent.
const ENTRY_BITS: u64 = 0xff00_0000_0001_afff;
const REDIRECTION_FIRST: u8 = 0x10;

/// The electrical level a device drives a pin to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// Low.
    Low,
    /// High.
    High,
}

/// The I/O APIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoApic {
    id: u8,
    select: u8,
    entries: [u64; IOAPIC_PINS],
    /// Bit `pin` set: the pin is driven high.
    lines: u32,
}

impl Default for IoApic {
    fn default() -> IoApic {
        IoApic {
            id: 0,
            select: 0,
            entries: [MASKED; IOAPIC_PINS],
            lines: 0,
        }
    }
}

impl IoApic {
    /// Redirection entry `pin` (64 bits).
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.entries.get(pin).copied()
    }

    fn asserted(&self, pin: usize) -> bool {
        let high = self.lines & (1 << pin) != 0;
        high != (self.entries[pin] & ACTIVE_LOW != 0)
    }

    fn message(&self, pin: usize) -> Message {
        let entry = self.entries[pin];
        let low = entry as u32;
        Message {
            vector: Vector(low as u8),
            delivery: DeliveryMode::of_bits(low),
            // A redirection entry has no shorthand: bits 19:18 are reserved.
            destination: Destination::of_bits(low & !(0b11 << 18), (entry >> 56) as u8),
            trigger: TriggerMode::of_bits(low),
            level: Level::Assert,
        }
    }

    /// A level-triggered pin sends while it is asserted, unmasked, and its
    /// last interrupt was ended (remote IRR clear).
    fn try_level(&mut self, pin: usize, out: &mut Vec<Message>) {
        let entry = self.entries[pin];
        if entry & LEVEL != 0 && entry & (MASKED | REMOTE_IRR) == 0 && self.asserted(pin) {
            self.entries[pin] |= REMOTE_IRR;
            out.push(self.message(pin));
        }
    }

    /// A device drives `pin` to `line`; what fires goes to `out`. An
    /// edge-triggered pin fires as it becomes asserted (lost while
    /// masked); a level-triggered one as long as it stays asserted. A
    /// pin beyond the 24 is no wire: nothing happens.
    pub fn set_irq(&mut self, pin: usize, line: Line, out: &mut Vec<Message>) {
        if pin >= IOAPIC_PINS {
            return;
        }
        let was = self.asserted(pin);
        match line {
            Line::High => self.lines |= 1 << pin,
            Line::Low => self.lines &= !(1 << pin),
        }
        let entry = self.entries[pin];
        if entry & LEVEL != 0 {
            self.try_level(pin, out);
        } else if !was && self.asserted(pin) && entry & MASKED == 0 {
            out.push(self.message(pin));
        }
    }

    /// The EOI of `vector` (broadcast by a local APIC or written to the
    /// EOI register): level-triggered pins of that vector may send again.
    pub fn eoi(&mut self, vector: Vector, out: &mut Vec<Message>) {
        for pin in 0..IOAPIC_PINS {
            let entry = self.entries[pin];
            if entry & REMOTE_IRR != 0 && entry as u8 == vector.0 {
                self.entries[pin] &= !REMOTE_IRR;
                self.try_level(pin, out);
            }
        }
    }

    /// Reads the 32-bit register at `offset` of the window.
    pub fn read(&self, offset: u32) -> u32 {
        match offset {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.read_register(self.select),
            _ => 0,
        }
    }

    /// Writes `value` at `offset` of the window; what fires goes to `out`.
    pub fn write(&mut self, offset: u32, value: u32, out: &mut Vec<Message>) {
        match offset {
            IOREGSEL => self.select = value as u8,
            IOWIN => self.write_register(self.select, value, out),
            IOAPIC_EOI => self.eoi(Vector(value as u8), out),
            _ => {}
        }
    }

    fn entry_half(index: u8) -> Option<(usize, bool)> {
        let at = usize::from(index.checked_sub(REDIRECTION_FIRST)?);
        (at < 2 * IOAPIC_PINS).then_some((at / 2, at % 2 == 1))
    }

    fn read_register(&self, index: u8) -> u32 {
        match index {
            0x00 | 0x02 => u32::from(self.id) << 24,
            0x01 => IOAPIC_VERSION,
            _ => match Self::entry_half(index) {
                Some((pin, true)) => (self.entries[pin] >> 32) as u32,
                Some((pin, false)) => self.entries[pin] as u32,
                None => 0,
            },
        }
    }

    fn write_register(&mut self, index: u8, value: u32, out: &mut Vec<Message>) {
        if index == 0x00 {
            self.id = ((value >> 24) & 0x0f) as u8;
            return;
        }
        let Some((pin, high)) = Self::entry_half(index) else {
            return; // version, arbitration and reserved registers
        };
        let old = self.entries[pin];
        let written = if high {
            (old & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (old & !0xffff_ffff) | u64::from(value)
        };
        let mut entry = (written & ENTRY_BITS) | (old & REMOTE_IRR);
        if entry & LEVEL == 0 {
            entry &= !REMOTE_IRR;
        }
        self.entries[pin] = entry;
        // An unmasked level-triggered pin already asserted sends now.
        self.try_level(pin, out);
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        w.u8(self.id);
        w.u8(self.select);
        for entry in self.entries {
            w.u64(entry);
        }
        w.u32(self.lines);
    }

    pub(crate) fn restore(r: &mut Reader<'_>) -> Result<IoApic, DecodeError> {
        let id = r.u8()?;
        if id > 0x0f {
            return Err(DecodeError::Invalid(format!("I/O APIC ID {id}")));
        }
        let select = r.u8()?;
        let mut entries = [0; IOAPIC_PINS];
        for (pin, entry) in entries.iter_mut().enumerate() {
            *entry = r.u64()?;
            let remote_without_level = *entry & REMOTE_IRR != 0 && *entry & LEVEL == 0;
            if *entry & !(ENTRY_BITS | REMOTE_IRR) != 0 || remote_without_level {
                return Err(DecodeError::Invalid(format!(
                    "I/O APIC pin {pin} entry {entry:#x}"
                )));
            }
        }
        let lines = r.u32()?;
        if lines >> IOAPIC_PINS != 0 {
            return Err(DecodeError::Invalid(format!("I/O APIC lines {lines:#x}")));
        }
        Ok(IoApic {
            id,
            select,
            entries,
            lines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(ioapic: &mut IoApic, pin: u8, low: u32, high: u32) {
        let mut out = Vec::new();
        ioapic.write(
            IOREGSEL,
            u32::from(REDIRECTION_FIRST + 2 * pin + 1),
            &mut out,
        );
        ioapic.write(IOWIN, high, &mut out);
        ioapic.write(IOREGSEL, u32::from(REDIRECTION_FIRST + 2 * pin), &mut out);
        ioapic.write(IOWIN, low, &mut out);
        assert!(out.is_empty(), "no pin is driven yet");
    }

    fn reg(ioapic: &mut IoApic, index: u32) -> u32 {
        ioapic.write(IOREGSEL, index, &mut Vec::new());
        ioapic.read(IOWIN)
    }

    #[test]
    fn id_version_and_entries_read_back() {
        let mut ioapic = IoApic::default();
        assert_eq!(
            reg(&mut ioapic, 0x01),
            0x0017_0020,
            "24 entries, version 0x20"
        );
        ioapic.write(IOREGSEL, 0, &mut Vec::new());
        ioapic.write(IOWIN, 0xffff_ffff, &mut Vec::new());
        assert_eq!(reg(&mut ioapic, 0x00), 0x0f00_0000, "ID is bits 27:24");
        assert_eq!(
            reg(&mut ioapic, 0x02),
            0x0f00_0000,
            "arbitration ID follows"
        );
        assert_eq!(reg(&mut ioapic, 0x10), 0x0001_0000, "entries start masked");
        program(&mut ioapic, 23, 0xffff_ffff, 0xffff_ffff);
        assert_eq!(
            reg(&mut ioapic, 0x10 + 46),
            0x0001_afff,
            "RO and reserved bits read 0"
        );
        assert_eq!(reg(&mut ioapic, 0x10 + 47), 0xff00_0000);
        assert_eq!(reg(&mut ioapic, 0x40), 0, "no register beyond pin 23");
        assert_eq!(ioapic.read(IOREGSEL), 0x40);
    }

    #[test]
    fn an_edge_pin_fires_on_its_rising_edge_only_and_not_while_masked() {
        let mut ioapic = IoApic::default();
        program(&mut ioapic, 4, 0x0000_0024, 0x0100_0000);
        let mut out = Vec::new();
        ioapic.set_irq(4, Line::High, &mut out);
        ioapic.set_irq(4, Line::High, &mut out);
        assert_eq!(out.len(), 1, "held high is one edge");
        assert_eq!(out[0].vector, Vector(0x24));
        assert_eq!(out[0].destination, Destination::Physical(1));
        assert_eq!(out[0].trigger, TriggerMode::Edge);
        ioapic.set_irq(4, Line::Low, &mut out);
        ioapic.set_irq(4, Line::High, &mut out);
        assert_eq!(out.len(), 2);
        program(&mut ioapic, 4, 0x0001_0024, 0x0100_0000);
        ioapic.set_irq(4, Line::Low, &mut out);
        ioapic.set_irq(4, Line::High, &mut out);
        assert_eq!(out.len(), 2, "masked: the edge is lost");
        program(&mut ioapic, 4, 0x0000_0024, 0x0100_0000);
        assert_eq!(out.len(), 2, "unmasking does not replay an edge");
    }

    #[test]
    fn a_level_pin_waits_for_the_eoi_and_fires_again_while_asserted() {
        let mut ioapic = IoApic::default();
        program(&mut ioapic, 9, 0x0000_8830, 0x0300_0000); // level, logical
        let mut out = Vec::new();
        ioapic.set_irq(9, Line::High, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].trigger, TriggerMode::Level);
        assert_eq!(out[0].destination, Destination::Logical(3));
        assert_ne!(
            ioapic.entry(9).expect("pin") & REMOTE_IRR,
            0,
            "remote IRR set"
        );
        ioapic.set_irq(9, Line::High, &mut out);
        assert_eq!(out.len(), 1, "remote IRR holds it");
        ioapic.eoi(Vector(0x31), &mut out);
        assert_eq!(out.len(), 1, "another vector's EOI");
        ioapic.eoi(Vector(0x30), &mut out);
        assert_eq!(out.len(), 2, "still asserted: fires again");
        ioapic.set_irq(9, Line::Low, &mut out);
        ioapic.write(IOAPIC_EOI, 0x30, &mut out);
        assert_eq!(out.len(), 2, "deasserted: quiet after the EOI");
        assert_eq!(ioapic.entry(9).expect("pin") & REMOTE_IRR, 0);
    }

    #[test]
    fn unmasking_an_asserted_level_pin_fires_it() {
        let mut ioapic = IoApic::default();
        program(&mut ioapic, 2, 0x0001_8040, 0);
        let mut out = Vec::new();
        ioapic.set_irq(2, Line::High, &mut out);
        assert!(out.is_empty(), "masked");
        ioapic.write(IOREGSEL, 0x14, &mut out);
        ioapic.write(IOWIN, 0x0000_8040, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].vector, Vector(0x40));
    }

    #[test]
    fn an_active_low_pin_is_asserted_when_driven_low() {
        let mut ioapic = IoApic::default();
        let mut out = Vec::new();
        ioapic.set_irq(5, Line::High, &mut out);
        program(&mut ioapic, 5, 0x0000_a050, 0); // level, active low
        ioapic.set_irq(5, Line::Low, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].vector, Vector(0x50));
        ioapic.set_irq(24, Line::High, &mut out);
        ioapic.set_irq(usize::MAX, Line::High, &mut out);
        assert_eq!(out.len(), 1, "no pin 24");
    }

    #[test]
    fn restore_refuses_bits_that_cannot_be_set() {
        let mut ioapic = IoApic::default();
        program(&mut ioapic, 0, 0x0000_8020, 0);
        ioapic.set_irq(0, Line::High, &mut Vec::new());
        let mut w = Writer::new();
        ioapic.save(&mut w);
        let bytes = w.into_bytes();
        let back = IoApic::restore(&mut Reader::new(&bytes)).expect("decodes");
        assert_eq!(back, ioapic);
        let mut delivery_status = bytes.clone();
        delivery_status[2 + 1] |= 0x10; // bit 12 of entry 0
        assert!(IoApic::restore(&mut Reader::new(&delivery_status)).is_err());
        let mut lines = bytes.clone();
        let at = lines.len() - 1;
        lines[at] = 0x01; // bit 24
        assert!(IoApic::restore(&mut Reader::new(&lines)).is_err());
        let mut edge_remote = bytes;
        edge_remote[2 + 1] &= !0x80; // entry 0 edge, remote IRR still set
        assert!(IoApic::restore(&mut Reader::new(&edge_remote)).is_err());
    }
}
