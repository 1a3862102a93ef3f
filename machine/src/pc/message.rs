//! Interrupt messages: what an ICR write of a local APIC or a redirection
//! entry of the I/O APIC sends to the local APICs. Both use the same
//! encoding of delivery mode, destination mode and trigger mode.

use super::vectors::Vector;

/// Bits 10:8 of an ICR or a redirection entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector to the destinations' IRR.
    Fixed,
    /// The vector to one destination: the one of lowest priority.
    LowestPriority,
    /// A system management interrupt (not modelled: ignored).
    Smi,
    /// A non-maskable interrupt.
    Nmi,
    /// INIT: the destinations reset and wait for a start-up IPI.
    Init,
    /// Start-up (SIPI): a waiting destination starts in real mode at
    /// `vector << 12`.
    Startup,
    /// External interrupt from an 8259 (none here: ignored).
    ExtInt,
    /// The reserved encoding 011b.
    Reserved,
}

impl DeliveryMode {
    /// The mode bits 10:8 of `value` select.
    pub fn of_bits(value: u32) -> DeliveryMode {
        match (value >> 8) & 0b111 {
            0b000 => DeliveryMode::Fixed,
            0b001 => DeliveryMode::LowestPriority,
            0b010 => DeliveryMode::Smi,
            0b100 => DeliveryMode::Nmi,
            0b101 => DeliveryMode::Init,
            0b110 => DeliveryMode::Startup,
            0b111 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// Bit 15: edge or level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerMode {
    /// Edge-triggered: no EOI reaches the I/O APIC.
    Edge,
    /// Level-triggered: the local APIC sets the vector's TMR bit, and its
    /// EOI is broadcast to the I/O APIC.
    Level,
}

impl TriggerMode {
    /// The trigger mode bit 15 of `value` selects.
    pub fn of_bits(value: u32) -> TriggerMode {
        if value & (1 << 15) != 0 {
            TriggerMode::Level
        } else {
            TriggerMode::Edge
        }
    }
}

/// Bit 14 of an ICR: assert or de-assert (only INIT de-assert means
/// anything, and it does nothing on processors since the Pentium 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// De-assert.
    Deassert,
    /// Assert.
    Assert,
}

/// Who a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The local APIC whose ID is this (0xff: every one).
    Physical(u8),
    /// The local APICs whose logical destination (LDR, DFR) matches this
    /// (0xff: every one).
    Logical(u8),
    /// The sender only (ICR shorthand 01b).
    SelfOnly,
    /// Every local APIC, the sender too (shorthand 10b).
    All,
    /// Every local APIC but the sender (shorthand 11b).
    AllButSelf,
}

impl Destination {
    /// The destination an ICR (low and high halves) or a redirection
    /// entry (`shorthand` 0, `field` its bits 63:56) names.
    pub fn of_bits(low: u32, field: u8) -> Destination {
        match (low >> 18) & 0b11 {
            0b01 => Destination::SelfOnly,
            0b10 => Destination::All,
            0b11 => Destination::AllButSelf,
            _ if low & (1 << 11) != 0 => Destination::Logical(field),
            _ => Destination::Physical(field),
        }
    }
}

/// One interrupt message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// The vector (for a start-up IPI: the start page).
    pub vector: Vector,
    /// What the destinations do with it.
    pub delivery: DeliveryMode,
    /// Who it is for.
    pub destination: Destination,
    /// Edge or level.
    pub trigger: TriggerMode,
    /// Assert or de-assert.
    pub level: Level,
}

impl Message {
    /// The message an ICR write sends: `low` the ICR's low half (the write),
    /// `high` its high half.
    pub fn of_icr(low: u32, high: u32) -> Message {
        Message {
            vector: Vector(low as u8),
            delivery: DeliveryMode::of_bits(low),
            destination: Destination::of_bits(low, (high >> 24) as u8),
            trigger: TriggerMode::of_bits(low),
            level: if low & (1 << 14) != 0 {
                Level::Assert
            } else {
                Level::Deassert
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_icr_decodes_into_its_fields() {
        // Linux's INIT assert to APIC 3: level, assert, INIT, physical.
        let init = Message::of_icr(0x0000_c500, 3 << 24);
        assert_eq!(init.delivery, DeliveryMode::Init);
        assert_eq!(init.destination, Destination::Physical(3));
        assert_eq!(init.trigger, TriggerMode::Level);
        assert_eq!(init.level, Level::Assert);
        let sipi = Message::of_icr(0x0000_0698, 1 << 24);
        assert_eq!(sipi.delivery, DeliveryMode::Startup);
        assert_eq!(sipi.vector, Vector(0x98));
        let logical = Message::of_icr(0x0000_0830, 0x05 << 24);
        assert_eq!(logical.destination, Destination::Logical(5));
        assert_eq!(logical.delivery, DeliveryMode::Fixed);
        assert_eq!(logical.trigger, TriggerMode::Edge);
        for (shorthand, destination) in [
            (1, Destination::SelfOnly),
            (2, Destination::All),
            (3, Destination::AllButSelf),
        ] {
            let m = Message::of_icr(0x40 | shorthand << 18 | 1 << 11, 0xff << 24);
            assert_eq!(m.destination, destination, "shorthand overrides the mode");
        }
        assert_eq!(DeliveryMode::of_bits(0x300), DeliveryMode::Reserved);
        assert_eq!(DeliveryMode::of_bits(0x700), DeliveryMode::ExtInt);
        assert_eq!(DeliveryMode::of_bits(0x400), DeliveryMode::Nmi);
        assert_eq!(DeliveryMode::of_bits(0x100), DeliveryMode::LowestPriority);
    }
}
