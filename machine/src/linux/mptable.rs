//! The Intel MultiProcessor Specification 1.4 table, how a kernel booted
//! with `acpi=off` finds the APICs: without it Linux takes the local APIC
//! in virtual-wire mode with no configuration, leaves the I/O APIC off and
//! never sets up the local APIC timer (no tick). The floating pointer and
//! the configuration table sit in the last KiB of base memory, which the
//! kernel scans and the e820 map reserves.

use crate::pc::ioapic::IOAPIC_BASE;
use crate::pc::lapic::APIC_BASE_DEFAULT;

/// Where the floating pointer is; the configuration table follows it.
pub const MP_TABLE: u64 = 0x9_fc00;
/// The table's bytes stay below the end of the reserved KiB.
pub const MP_TABLE_BYTES_MAX: usize = 0x400;

const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x20;
/// The I/O APIC's id: its ID register's value at reset (Linux takes the
/// register's id on x86-64 and matches the interrupt entries against it).
const IOAPIC_ID: u8 = 0;
const ISA_IRQS: u8 = 16;
/// Interrupt types of the assignment entries.
const INT: u8 = 0;
const NMI: u8 = 1;
const EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

/// The entries of the configuration table: each vCPU (0 the BSP), the ISA
/// bus, the I/O APIC, ISA IRQ n on I/O APIC pin n (IRQ 0, the PIT's, on
/// pin 2 as on PCs), ExtINT on LINT0 and NMI on LINT1.
fn entries(vcpus: u16) -> (Vec<u8>, u16) {
    let mut out = Vec::new();
    let mut count = 0u16;
    for vcpu in 0..vcpus {
        let flags = if vcpu == 0 { 0x3 } else { 0x1 }; // enabled, BSP
        let id = u8::try_from(vcpu).expect("at most 8 vCPUs");
        out.extend_from_slice(&[0, id, LAPIC_VERSION, flags]);
        out.extend_from_slice(&0x0600u32.to_le_bytes()); // family 6
        out.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        out.extend_from_slice(&[0; 8]);
        count += 1;
    }
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(b"ISA   ");
    out.extend_from_slice(&[2, IOAPIC_ID, IOAPIC_VERSION, 1]);
    out.extend_from_slice(&u32::try_from(IOAPIC_BASE).expect("32-bit").to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        let pin = if irq == 0 { 2 } else { irq };
        out.extend_from_slice(&[3, INT, 0, 0, 0, irq, IOAPIC_ID, pin]);
        count += 1;
    }
    out.extend_from_slice(&[4, EXTINT, 0, 0, 0, 0, 0xff, 0]);
    out.extend_from_slice(&[4, NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    (out, count)
}

/// The floating pointer and configuration table for `vcpus` vCPUs, as
/// laid at [`MP_TABLE`].
pub fn mp_table(vcpus: u16) -> Vec<u8> {
    let config_at = MP_TABLE + 16;
    let (body, count) = entries(vcpus);
    let mut config = Vec::new();
    config.extend_from_slice(b"PCMP");
    let length = u16::try_from(44 + body.len()).expect("small");
    config.extend_from_slice(&length.to_le_bytes());
    config.extend_from_slice(&[4, 0]); // revision 1.4, checksum below
    config.extend_from_slice(b"LOCKSTEP");
    config.extend_from_slice(b"EMULATED PC ");
    config.extend_from_slice(&[0; 6]); // no OEM table
    config.extend_from_slice(&count.to_le_bytes());
    let lapic = u32::try_from(APIC_BASE_DEFAULT).expect("32-bit");
    config.extend_from_slice(&lapic.to_le_bytes());
    config.extend_from_slice(&[0; 4]); // no extended table
    assert_eq!(config.len(), 44);
    config.extend_from_slice(&body);
    config[7] = checksum(&config);

    let mut table = Vec::new();
    table.extend_from_slice(b"_MP_");
    let config_at = u32::try_from(config_at).expect("base memory");
    table.extend_from_slice(&config_at.to_le_bytes());
    table.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, 1.4, a table
    table[10] = checksum(&table);
    table.extend_from_slice(&config);
    assert!(table.len() <= MP_TABLE_BYTES_MAX);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_sums_to_zero_and_lists_every_vcpu_bus_ioapic_and_irq() {
        let table = mp_table(2);
        assert_eq!(&table[..4], b"_MP_");
        assert_eq!(table[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        let pointer = u32::from_le_bytes(table[4..8].try_into().expect("4 bytes"));
        assert_eq!(u64::from(pointer), MP_TABLE + 16);
        let config = &table[16..];
        assert_eq!(&config[..4], b"PCMP");
        let length = usize::from(u16::from_le_bytes([config[4], config[5]]));
        assert_eq!(length, config.len());
        assert_eq!(config.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        // 2 processors, bus, I/O APIC, 16 ISA IRQs, 2 local interrupts.
        assert_eq!(u16::from_le_bytes([config[34], config[35]]), 22);
        assert_eq!(config[44], 0, "a processor first");
        assert_eq!(config[47], 3, "vCPU 0 is the BSP");
        assert_eq!(config[64 + 3], 1, "vCPU 1 enabled, not the BSP");
        // COM1's IRQ 4 on pin 4.
        let irq4 = 44 + 2 * 20 + 8 + 8 + 4 * 8;
        assert_eq!(&config[irq4..irq4 + 8], &[3, 0, 0, 0, 0, 4, 0, 4]);
    }
}
