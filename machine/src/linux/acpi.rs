//! The ACPI tables of the Linux PC, how Debian's kernel finds its
//! virtio-mmio devices (its virtio_mmio driver binds `LNRO0005` devices
//! of the DSDT; it takes none from the command line): an RSDP pointing at
//! an XSDT that lists a hardware-reduced FADT (no PM timer, no SCI, no
//! fixed buttons, no 8042, no VGA), the MADT (each vCPU's local APIC, the
//! I/O APIC, ISA IRQ 0 on pin 2 and NMI on LINT1, as the MP table says)
//! and the DSDT with COM1 and one device per [`VirtioSlot`]. Laid out by the
//! rust-vmm `acpi_tables` builders at [`ACPI_TABLES`], which the e820 map
//! marks as ACPI memory; the zero page's `acpi_rsdp_addr` points at the
//! RSDP, so the kernel need not scan the BIOS area for it.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::pc::ioapic::IOAPIC_BASE;
use crate::pc::lapic::APIC_BASE_DEFAULT;
use crate::pc::uart::{COM1_BASE, COM1_IRQ, COM1_PORTS};
use crate::units::Gpa;
use crate::virtio::{VirtioSlot, VIRTIO_MMIO_WINDOW_BYTES};

/// Where the tables are: the RSDP first, the others after it.
pub const ACPI_TABLES: Gpa = Gpa(0x9000);
/// The room they have (the e820 map's ACPI range).
pub const ACPI_TABLES_BYTES_MAX: u64 = 0x2000;

const OEM_ID: [u8; 6] = *b"LCKSTP";
const OEM_TABLE_ID: [u8; 8] = *b"EMULATPC";
const OEM_REVISION: u32 = 1;
/// The DSDT's revision: 2 and above mean 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
/// The MADT's revision (ACPI 6.x).
const MADT_REVISION: u8 = 5;
/// The I/O APIC's id, as the MP table gives it.
const IOAPIC_ID: u8 = 0;
/// IAPC_BOOT_ARCH: no VGA, no MSI; the LEGACY_DEVICES and 8042 bits
/// clear (none of them here). The CMOS RTC bit stays clear (an RTC is
/// present): the platform is getting one.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
/// MADT structure types this module writes by hand (the crate has no
/// builder for them).
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// The MP table's routing: ISA IRQ 0 (the PIT's) on I/O APIC pin 2.
const IRQ0_GSI: u32 = 2;
/// LINT1 carries NMI, on every processor (uid 0xff).
const NMI_LINT: u8 = 1;
const ALL_PROCESSORS: u8 = 0xff;

/// The tables as laid out at [`ACPI_TABLES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Their bytes, from [`ACPI_TABLES`] on.
    pub bytes: Vec<u8>,
    /// Where the RSDP is (the zero page's `acpi_rsdp_addr`).
    pub rsdp: Gpa,
}

/// Appends `table` 8-byte aligned to `out`: its address.
fn place(out: &mut Vec<u8>, table: &dyn Aml) -> u64 {
    out.resize(out.len().next_multiple_of(8), 0);
    let at = ACPI_TABLES.0 + out.len() as u64;
    table.to_aml_bytes(out);
    at
}

/// The tables for `vcpus` vCPUs and the platform's virtio-mmio windows.
pub fn acpi_tables(vcpus: u16) -> AcpiTables {
    // The RSDP first (16-byte aligned, at the start), then the tables it
    // leads to, each placed before the one that points at it is built.
    let mut out = vec![0u8; Rsdp::len()];
    let dsdt = place(&mut out, &dsdt());
    let fadt = place(&mut out, &fadt(dsdt));
    let madt = place(&mut out, &madt(vcpus));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    let xsdt = place(&mut out, &xsdt);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt).to_aml_bytes(&mut rsdp);
    out[..rsdp.len()].copy_from_slice(&rsdp);
    assert!(
        out.len() as u64 <= ACPI_TABLES_BYTES_MAX,
        "{} bytes",
        out.len()
    );
    AcpiTables {
        bytes: out,
        rsdp: ACPI_TABLES,
    }
}

/// Hardware-reduced: no PM timer, SCI, GPE blocks or fixed buttons; the
/// kernel then looks for none of the legacy hardware the PC lacks.
fn fadt(dsdt: u64) -> impl Aml {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    builder.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED).into();
    builder.finalize()
}

/// The local APIC address, no 8259 pair (flags 0), each vCPU's local APIC
/// (uid = APIC ID = vCPU index), the I/O APIC at GSI 0, and the MP
/// table's two exceptions to "ISA IRQ n is GSI n".
fn madt(vcpus: u16) -> Sdt {
    let mut madt = Sdt::new(
        *b"APIC",
        36,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let lapic = u32::try_from(APIC_BASE_DEFAULT).expect("32-bit");
    madt.append_slice(&lapic.to_le_bytes());
    madt.append_slice(&0u32.to_le_bytes());
    let mut entries = Vec::new();
    for vcpu in 0..vcpus {
        let id = u8::try_from(vcpu).expect("xAPIC IDs are a byte");
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    let ioapic = u32::try_from(IOAPIC_BASE).expect("32-bit");
    IoApic::new(IOAPIC_ID, ioapic, 0).to_aml_bytes(&mut entries);
    entries.extend_from_slice(&interrupt_source_override(0, IRQ0_GSI));
    entries.extend_from_slice(&local_apic_nmi(ALL_PROCESSORS, NMI_LINT));
    madt.append_slice(&entries);
    madt
}

/// ISA IRQ `irq` is GSI `gsi`, with the bus's polarity and trigger.
fn interrupt_source_override(irq: u8, gsi: u32) -> [u8; 10] {
    let mut entry = [0u8; 10];
    entry[..4].copy_from_slice(&[MADT_INTERRUPT_SOURCE_OVERRIDE, 10, 0, irq]);
    entry[4..8].copy_from_slice(&gsi.to_le_bytes());
    entry
}

/// NMI arrives on `lint` of processor `uid`, with the bus's polarity.
fn local_apic_nmi(uid: u8, lint: u8) -> [u8; 6] {
    [MADT_LOCAL_APIC_NMI, 6, uid, 0, 0, lint]
}

/// `\_SB_.COM1`: the 16550 at its ISA ports and IRQ 4, edge-triggered
/// and active high, as a PNP0501 device. A hardware-reduced ACPI kernel
/// preallocates no legacy IRQs: the 8250 port it assumes at 0x3f8 with
/// IRQ 4 gets no interrupt unless a device declares the pin, and then a
/// process's writes to the console wait for ever for a transmit
/// interrupt (the kernel's own printk polls and is unaffected).
fn com1() -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = Name::new("_UID".into(), &0u32);
    let ports = u8::try_from(COM1_PORTS).expect("8 ports");
    let io = IO::new(COM1_BASE, COM1_BASE, 1, ports);
    let irq = u32::try_from(COM1_IRQ).expect("an ISA IRQ");
    let interrupt = Interrupt::new(true, true, false, false, irq);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &interrupt]));
    let mut bytes = Vec::new();
    Device::new("COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut bytes);
    bytes
}

/// `\_SB_.VRTn` for window n: `_HID` LNRO0005 (virtio-mmio), and in its
/// `_CRS` the window and its pin, level-triggered and active high (a
/// virtio-mmio interrupt is a level: InterruptStatus until acknowledged).
fn dsdt() -> Sdt {
    let names: Vec<(String, u32, u64, u32)> = VirtioSlot::ALL
        .iter()
        .map(|slot| {
            (
                format!("VRT{}", slot.index()),
                slot.index(),
                slot.base(),
                slot.gsi(),
            )
        })
        .collect();
    let mut devices = vec![com1()];
    for (name, uid, base, gsi) in &names {
        let base = u32::try_from(*base).expect("below 4 GiB");
        let window = u32::try_from(VIRTIO_MMIO_WINDOW_BYTES).expect("small");
        let hid = Name::new("_HID".into(), &"LNRO0005");
        let uid = Name::new("_UID".into(), uid);
        let memory = Memory32Fixed::new(true, base, window);
        let interrupt = Interrupt::new(true, false, false, false, *gsi);
        let crs = Name::new(
            "_CRS".into(),
            &ResourceTemplate::new(vec![&memory, &interrupt]),
        );
        let mut bytes = Vec::new();
        Device::new(name.as_str().into(), vec![&hid, &uid, &crs]).to_aml_bytes(&mut bytes);
        devices.push(bytes);
    }
    let aml = Scope::raw("\\_SB_".into(), devices.concat());
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&aml);
    dsdt
}

#[cfg(test)]
mod tests;
