//! Boot state: the bytes every engine starts from (GDT, identity-mapped page
//! tables, boot info) and each vCPU's initial registers, already in 64-bit
//! long mode, so no engine runs real-mode setup code of its own.

use crate::layout::{
    Shape, BOOT_INFO, CODE_SELECTOR, DATA_SELECTOR, GDT, GUEST_CODE, MEMORY_BYTES_ALIGN, PD, PDPT,
    PML4,
};
use crate::vcpu::{gpr, RunState, VcpuState};

/// Number of guest-specific parameters in the boot info page.
pub const BOOT_PARAMS: usize = 8;
/// Magic at the start of the boot info page ("LKSTBOOT").
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"LKSTBOOT");
/// Offset of the vCPU count in the boot info page.
pub const BOOT_INFO_VCPUS: u64 = 8;
/// Offset of the memory size in the boot info page.
pub const BOOT_INFO_MEMORY_BYTES: u64 = 16;
/// Offset of guest parameter 0 in the boot info page; parameter i is at
/// `BOOT_INFO_PARAMS + 8 * i`.
pub const BOOT_INFO_PARAMS: u64 = 24;

/// GDT: null, 64-bit code (present, DPL 0, L=1), data (present, writable).
const GDT_ENTRIES: [u64; 3] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];
/// Present, writable, and already accessed: the accessed and dirty bits
/// are set up front so the CPU's page walker never writes the tables. Its
/// writes would bypass the emulated engine's write-protection dirty
/// tracking and go missing from checkpoint deltas.
const PTE_PRESENT_WRITABLE: u64 = 0x3 | 0x20;
const PDE_LARGE_PAGE: u64 = 0x80 | 0x40;

/// CR0: PE, MP, ET, NE, WP, PG.
pub const CR0_LONG_MODE: u64 = 0x8001_0033;
/// CR4: PAE, OSFXSR, OSXMMEXCPT.
pub const CR4_LONG_MODE: u64 = 0x620;
/// EFER: LME, LMA.
pub const EFER_LONG_MODE: u64 = 0x500;
/// rflags at boot: only the always-one bit; interrupts off.
pub const RFLAGS_BOOT: u64 = 0x2;

pub(crate) fn put_u64(memory: &mut [u8], at: u64, value: u64) {
    let at = usize::try_from(at).expect("boot structures are in the first MiB");
    memory[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Writes the boot structures into zeroed guest memory: GDT, page tables
/// identity-mapping all of memory with 2 MiB pages, and the boot info page
/// holding the vCPU count, memory size and the guest's parameters.
pub fn write_boot_state(memory: &mut [u8], shape: &Shape, params: &[u64; BOOT_PARAMS]) {
    assert_eq!(memory.len() as u64, shape.memory_bytes());
    for (i, entry) in GDT_ENTRIES.iter().enumerate() {
        put_u64(memory, GDT.0 + 8 * i as u64, *entry);
    }
    write_identity_map(memory, shape);
    put_u64(memory, BOOT_INFO.0, BOOT_MAGIC);
    put_u64(
        memory,
        BOOT_INFO.0 + BOOT_INFO_VCPUS,
        u64::from(shape.vcpus()),
    );
    put_u64(
        memory,
        BOOT_INFO.0 + BOOT_INFO_MEMORY_BYTES,
        shape.memory_bytes(),
    );
    for (i, param) in params.iter().enumerate() {
        put_u64(
            memory,
            BOOT_INFO.0 + BOOT_INFO_PARAMS + 8 * i as u64,
            *param,
        );
    }
}

/// Writes the page tables at [`PML4`], [`PDPT`] and [`PD`] that
/// identity-map all of memory with 2 MiB pages (and nothing past it).
pub fn write_identity_map(memory: &mut [u8], shape: &Shape) {
    assert_eq!(memory.len() as u64, shape.memory_bytes());
    put_u64(memory, PML4.0, PDPT.0 | PTE_PRESENT_WRITABLE);
    put_u64(memory, PDPT.0, PD.0 | PTE_PRESENT_WRITABLE);
    let large_pages = shape.memory_bytes() / MEMORY_BYTES_ALIGN;
    assert!(large_pages <= 512);
    for i in 0..large_pages {
        let entry = (i * MEMORY_BYTES_ALIGN) | PTE_PRESENT_WRITABLE | PDE_LARGE_PAGE;
        put_u64(memory, PD.0 + 8 * i, entry);
    }
}

/// The registers of vCPU `vcpu` at boot: long mode, rip at the guest's
/// entry, rsp at its own stack, rdi = its index, rsi = the boot info page.
pub fn initial_vcpu_state(shape: &Shape, vcpu: u16) -> VcpuState {
    let mut gprs = [0u64; 16];
    gprs[gpr::RSP] = shape.stack_top(vcpu).0;
    gprs[gpr::RDI] = u64::from(vcpu);
    gprs[gpr::RSI] = BOOT_INFO.0;
    let d = DATA_SELECTOR;
    VcpuState {
        gprs,
        rip: GUEST_CODE.0,
        rflags: RFLAGS_BOOT,
        cr0: CR0_LONG_MODE,
        cr3: PML4.0,
        cr4: CR4_LONG_MODE,
        efer: EFER_LONG_MODE,
        fs_base: 0,
        gs_base: 0,
        selectors: [CODE_SELECTOR, d, d, d, d, d],
        gdt_base: GDT.0,
        gdt_limit: u16::try_from(GDT_ENTRIES.len() * 8 - 1).expect("tiny GDT"),
        run_state: RunState::Running,
        system: None,
    }
}

#[cfg(test)]
mod segment_tests {
    use super::*;
    use crate::vcpu::Segment;

    #[test]
    fn the_boot_segments_are_flat_64_bit_code_and_flat_data() {
        let at = |selector: u16| GDT_ENTRIES[usize::from(selector >> 3)];
        let code = Segment::from_descriptor(CODE_SELECTOR, at(CODE_SELECTOR));
        assert_eq!((code.base, code.limit), (0, u32::MAX));
        assert_eq!(code.attributes, 0xa09a, "G, L, P, S, execute/read");
        let data = Segment::from_descriptor(DATA_SELECTOR, at(DATA_SELECTOR));
        assert_eq!((data.base, data.limit), (0, u32::MAX));
        assert_eq!(data.attributes, 0xc092, "G, D/B, P, S, read/write");
        assert_eq!(Segment::from_descriptor(0, at(0)), Segment::default());
        let bytes = Segment::from_descriptor(0x18, 0x1245_9234_5678_4321);
        assert_eq!(
            (bytes.base, bytes.limit, bytes.attributes),
            (0x1234_5678, 0x5_4321, 0x4092),
            "base in three parts, a byte-granular limit, D and present data"
        );
        let absent = Segment::from_descriptor(0x18, 0x1245_1234_5678_4321);
        assert_eq!(absent, Segment::default(), "not present: null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MEMORY_BYTES_MIN;

    #[test]
    fn identity_map_covers_memory() {
        let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid");
        let mut memory = vec![0u8; MEMORY_BYTES_MIN as usize];
        write_boot_state(&mut memory, &shape, &[7; BOOT_PARAMS]);
        let pde1 = u64::from_le_bytes(memory[0x4008..0x4010].try_into().expect("8 bytes"));
        assert_eq!(pde1, 0x20_0000 | 0xe3);
        let pde2 = u64::from_le_bytes(memory[0x4010..0x4018].try_into().expect("8 bytes"));
        assert_eq!(pde2, 0, "no mapping past the end of memory");
        let vcpus = u64::from_le_bytes(memory[0x5008..0x5010].try_into().expect("8 bytes"));
        assert_eq!(vcpus, 2);
        assert_eq!(initial_vcpu_state(&shape, 1).gprs[gpr::RDI], 1);
    }
}
