use super::*;

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

/// The table at guest address `gpa` in `tables`: checked to have the
/// `signature`, a length within the tables and a zero checksum.
fn table<'a>(tables: &'a AcpiTables, gpa: u64, signature: &[u8; 4]) -> &'a [u8] {
    let at = usize::try_from(gpa - ACPI_TABLES.0).expect("small");
    let bytes = &tables.bytes[at..];
    assert_eq!(&bytes[..4], signature);
    let length = u32_at(bytes, 4) as usize;
    assert!(length >= 36 && length <= bytes.len(), "{length}");
    let table = &bytes[..length];
    assert_eq!(
        sum(table),
        0,
        "{} checksum",
        String::from_utf8_lossy(signature)
    );
    table
}

/// The XSDT's entries, from the RSDP on.
fn xsdt_entries(tables: &AcpiTables) -> Vec<u64> {
    let rsdp = &tables.bytes[..36];
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2, "ACPI 2.0+: an XSDT");
    assert_eq!(sum(&rsdp[..20]), 0, "the ACPI 1.0 checksum");
    assert_eq!(sum(rsdp), 0, "the extended checksum");
    assert_eq!(u32_at(rsdp, 20), 36);
    let xsdt = table(tables, u64_at(rsdp, 24), b"XSDT");
    xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect()
}

/// The MADT's interrupt controller structures as (type, bytes).
fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut at = 44;
    while at < madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        assert!(len >= 2 && at + len <= madt.len(), "entry at {at}");
        out.push((kind, &madt[at..at + len]));
        at += len;
    }
    out
}

#[test]
fn the_rsdp_leads_to_a_hardware_reduced_fadt_its_dsdt_and_the_madt() {
    let tables = acpi_tables(2);
    assert_eq!(tables.rsdp, ACPI_TABLES);
    let entries = xsdt_entries(&tables);
    assert_eq!(entries.len(), 2);
    let fadt = table(&tables, entries[0], b"FACP");
    table(&tables, entries[1], b"APIC");
    assert_eq!(fadt.len(), 276, "an ACPI 6 FADT");
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_eq!(u16_at(fadt, 46), 0, "no SCI");
    assert_eq!(u32_at(fadt, 76), 0, "no PM timer block");
    let boot_arch = u16_at(fadt, 109);
    assert_eq!(boot_arch & 0b11, 0, "no legacy devices, no 8042");
    assert_ne!(boot_arch & (1 << 2), 0, "no VGA");
    assert_eq!(u32_at(fadt, 40), 0, "the DSDT by its 64-bit address only");
    table(&tables, u64_at(fadt, 140), b"DSDT");
    // Every table lies inside the ACPI range.
    assert!(tables.bytes.len() as u64 <= ACPI_TABLES_BYTES_MAX);
}

#[test]
fn the_madt_lists_each_local_apic_the_ioapic_and_the_mp_tables_overrides() {
    for vcpus in [1u16, 3] {
        let tables = acpi_tables(vcpus);
        let madt = table(&tables, xsdt_entries(&tables)[1], b"APIC");
        assert_eq!(u64::from(u32_at(madt, 36)), APIC_BASE_DEFAULT);
        assert_eq!(u32_at(madt, 40), 0, "no 8259 pair");
        let entries = madt_entries(madt);
        let lapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 0).collect();
        assert_eq!(lapics.len(), usize::from(vcpus));
        for (i, (_, e)) in lapics.iter().enumerate() {
            assert_eq!((e[2], e[3]), (i as u8, i as u8), "uid and APIC ID");
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
        let ioapics: Vec<_> = entries.iter().filter(|(t, _)| *t == 1).collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0].1;
        assert_eq!(u64::from(u32_at(ioapic, 4)), IOAPIC_BASE);
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");
        let overrides: Vec<_> = entries.iter().filter(|(t, _)| *t == 2).collect();
        assert_eq!(overrides.len(), 1);
        let iso = overrides[0].1;
        assert_eq!(
            (iso[2], iso[3], u32_at(iso, 4)),
            (0, 0, 2),
            "IRQ 0 on pin 2"
        );
        let nmis: Vec<_> = entries.iter().filter(|(t, _)| *t == 4).collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!((nmis[0].1[2], nmis[0].1[5]), (0xff, 1), "NMI on LINT1");
        assert_eq!(entries.len(), usize::from(vcpus) + 3, "nothing else");
    }
}

/// Where `needle` occurs in `haystack`.
fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    (0..=haystack.len().saturating_sub(needle.len()))
        .filter(|i| &haystack[*i..*i + needle.len()] == needle)
        .collect()
}

#[test]
fn the_dsdt_declares_each_virtio_mmio_window_with_its_interrupt() {
    let tables = acpi_tables(1);
    let fadt = table(&tables, xsdt_entries(&tables)[0], b"FACP");
    let dsdt = table(&tables, u64_at(fadt, 140), b"DSDT");
    assert_eq!(find_all(dsdt, b"_SB_").len(), 1, "one scope");
    assert_eq!(find_all(dsdt, b"LNRO0005\0").len(), VirtioSlot::ALL.len());
    for slot in VirtioSlot::ALL {
        let name = format!("VRT{}", slot.index());
        assert_eq!(find_all(dsdt, name.as_bytes()).len(), 1, "{name}");
        // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
        let mut memory = vec![0x86, 9, 0, 1];
        memory.extend_from_slice(&(slot.base() as u32).to_le_bytes());
        memory.extend_from_slice(&(VIRTIO_MMIO_WINDOW_BYTES as u32).to_le_bytes());
        assert_eq!(find_all(dsdt, &memory).len(), 1, "{name}'s window");
        // Extended interrupt: consumer, level, active high, exclusive.
        let mut interrupt = vec![0x89, 6, 0, 0x01, 1];
        interrupt.extend_from_slice(&slot.gsi().to_le_bytes());
        assert_eq!(find_all(dsdt, &interrupt).len(), 1, "{name}'s pin");
    }
}

#[test]
fn the_dsdt_declares_com1_with_its_ports_and_isa_irq() {
    let tables = acpi_tables(1);
    let fadt = table(&tables, xsdt_entries(&tables)[0], b"FACP");
    let dsdt = table(&tables, u64_at(fadt, 140), b"DSDT");
    assert_eq!(find_all(dsdt, b"COM1").len(), 1);
    // EISA id PNP0501, compressed: 0x41d0_0105 in bytes 41 d0 05 01.
    assert_eq!(find_all(dsdt, &[0x0c, 0x41, 0xd0, 0x05, 0x01]).len(), 1);
    // IO: tag 0x47, 16-bit decode, min = max = 0x3f8, align 1, 8 ports.
    let io = [0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8];
    assert_eq!(find_all(dsdt, &io).len(), 1, "COM1's ports");
    // Extended interrupt: consumer, edge, active high, exclusive, IRQ 4.
    let interrupt = [0x89, 6, 0, 0x03, 1, 4, 0, 0, 0];
    assert_eq!(find_all(dsdt, &interrupt).len(), 1, "COM1's IRQ");
}

#[test]
fn the_tables_are_the_same_bytes_every_time() {
    assert_eq!(acpi_tables(2), acpi_tables(2));
    assert_ne!(acpi_tables(2).bytes, acpi_tables(1).bytes);
}
