use super::*;
use crate::layout::MEMORY_BYTES_MIN;

/// The smallest image linux-loader takes as a bzImage: one setup sector
/// after the boot sector, the setup header's fields the loader and this
/// module read, and `payload` as the protected-mode kernel.
fn bzimage(init_size: u32, payload: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
    image[0x258..0x260].copy_from_slice(&0x20_0000u64.to_le_bytes());
    image[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    image.extend_from_slice(payload);
    image
}

fn u32_at(memory: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes(memory[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(memory: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_le_bytes(memory[at..at + 8].try_into().expect("8 bytes"))
}

#[test]
fn a_bzimage_boots_at_startup_64_with_its_zero_page_and_command_line() {
    let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let payload = [0x90u8; 0x300];
    let image = load(&shape, &bzimage(0x1000, &payload), "console=ttyS0", None).expect("loads");
    let memory = &image.memory;
    assert_eq!(image.kernel_load, Gpa(0x10_0000));
    assert_eq!(image.entry, Gpa(0x10_0200));
    assert_eq!(&memory[0x10_0000..0x10_0300], &payload[..]);
    // The setup header copied, the loader's fields set.
    let zero = ZERO_PAGE.0;
    assert_eq!(
        &memory[zero as usize + 0x202..zero as usize + 0x206],
        b"HdrS"
    );
    assert_eq!(memory[zero as usize + 0x210], 0xff, "type_of_loader");
    assert_eq!(u32_at(memory, zero + 0x228), CMDLINE.0 as u32);
    let line = &memory[CMDLINE.0 as usize..CMDLINE.0 as usize + 14];
    assert_eq!(line, b"console=ttyS0\0");
    // e820: RAM below the hole but for the ACPI tables, the hole, RAM
    // from 1 MiB to the end.
    assert_eq!(memory[zero as usize + 0x1e8], 5);
    let entry = |i: u64| {
        let at = zero + 0x2d0 + 20 * i;
        (
            u64_at(memory, at),
            u64_at(memory, at + 8),
            u32_at(memory, at + 16),
        )
    };
    assert_eq!(entry(0), (0, 0x9000, 1));
    assert_eq!(entry(1), (0x9000, 0x2000, 3));
    assert_eq!(entry(2), (0xb000, 0x9_fc00 - 0xb000, 1));
    assert_eq!(entry(3), (0x9_fc00, 0x6_0400, 2));
    assert_eq!(entry(4), (0x10_0000, MEMORY_BYTES_MIN - 0x10_0000, 1));
    // The RSDP at acpi_rsdp_addr, the tables in the ACPI range.
    assert_eq!(u64_at(memory, zero + 0x70), acpi::ACPI_TABLES.0);
    let rsdp = acpi::ACPI_TABLES.0 as usize;
    assert_eq!(&memory[rsdp..rsdp + 8], b"RSD PTR ");
    let tables = acpi::acpi_tables(1).bytes;
    assert_eq!(&memory[rsdp..rsdp + tables.len()], &tables[..]);
    // __BOOT_CS is 64-bit code, __BOOT_DS flat data; the identity map.
    assert_eq!(u64_at(memory, GDT.0 + 0x10), 0x00AF_9A00_0000_FFFF);
    assert_eq!(u64_at(memory, GDT.0 + 0x18), 0x00CF_9200_0000_FFFF);
    assert_eq!(u64_at(memory, 0x4008), 0x20_0000 | 0xe3);
    // The MP table in the reserved last KiB of base memory.
    let mp = mptable::MP_TABLE as usize;
    assert_eq!(&memory[mp..mp + 4], b"_MP_");
    assert_eq!(&memory[mp + 16..mp + 20], b"PCMP");
    let vcpu = &image.vcpu_states[0];
    assert_eq!(vcpu.rip, 0x10_0200);
    assert_eq!(vcpu.gprs[gpr::RSI], ZERO_PAGE.0);
    assert_eq!(vcpu.selectors, [0x10, 0x18, 0x18, 0x18, 0x18, 0x18]);
    assert_eq!(vcpu.gdt_limit, 31);
    assert_eq!(vcpu.rflags & 0x200, 0, "interrupts off");
}

#[test]
fn loading_is_reproducible() {
    let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let kernel = bzimage(0x1000, &[1, 2, 3]);
    assert_eq!(
        load(&shape, &kernel, DEFAULT_CMDLINE, None),
        load(&shape, &kernel, DEFAULT_CMDLINE, None)
    );
}

#[test]
fn application_processors_boot_in_inits_state_to_wait_for_their_startup_ipi() {
    let two = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
    let image = load(&two, &bzimage(0x1000, &[0x90; 16]), "", None).expect("two vCPUs load");
    assert_eq!(image.vcpu_states.len(), 2);
    assert_eq!(
        image.vcpu_states[0].rip, image.entry.0,
        "the BSP enters the kernel"
    );
    assert_eq!(image.vcpu_states[1], crate::pc::startup::after_init());
}

#[test]
fn what_cannot_boot_is_an_error_not_a_panic() {
    let one = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let kernel = bzimage(0x1000, &[0x90; 16]);
    assert!(matches!(
        load(&one, &bzimage(0x40_0000, &[0x90; 16]), "", None),
        Err(LinuxError::MemoryTooSmall { .. })
    ));
    assert!(matches!(
        load(&one, &[0u8; 4096], "", None),
        Err(LinuxError::Image(_))
    ));
    assert!(matches!(
        load(&one, &[], "", None),
        Err(LinuxError::Image(_))
    ));
    let long = "x".repeat(CMDLINE_BYTES_MAX * 2);
    assert!(matches!(
        load(&one, &kernel, &long, None),
        Err(LinuxError::Cmdline(_))
    ));
}

#[test]
fn an_initramfs_goes_page_aligned_to_the_top_of_memory() {
    let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let kernel = bzimage(0x1000, &[0x90; 16]);
    let initramfs = vec![0x07u8; 5000];
    let image = load(&shape, &kernel, "", Some(&initramfs)).expect("loads");
    let at = MEMORY_BYTES_MIN - 8192;
    assert_eq!(
        u32_at(&image.memory, ZERO_PAGE.0 + 0x218),
        at as u32,
        "ramdisk_image"
    );
    assert_eq!(
        u32_at(&image.memory, ZERO_PAGE.0 + 0x21c),
        5000,
        "ramdisk_size"
    );
    assert_eq!(
        &image.memory[at as usize..at as usize + 5000],
        &initramfs[..]
    );
    // One that would overlap the decompressed kernel is refused.
    let big = vec![0u8; (MEMORY_BYTES_MIN - 0x20_0000) as usize];
    assert_eq!(
        load(&shape, &kernel, "", Some(&big)),
        Err(LinuxError::Initramfs(big.len() as u64))
    );
}
