use std::collections::BTreeMap;

use super::*;
use crate::boot::{initial_vcpu_state, write_identity_map};
use crate::layout::{Shape, MEMORY_BYTES_MIN};
use crate::pc::startup::after_init;

/// Page-table entries by physical address; unwritten words read as 0
/// (not present), addresses past `end` as outside memory.
struct Tables {
    entries: BTreeMap<u64, u64>,
    end: u64,
}

impl Tables {
    fn new() -> Tables {
        Tables {
            entries: BTreeMap::new(),
            end: 1 << 40,
        }
    }

    fn set(&mut self, at: u64, entry: u64) -> &mut Tables {
        self.entries.insert(at, entry);
        self
    }

    fn translate(&self, state: &VcpuState, linear: u64) -> Option<u64> {
        let mut read = |gpa: Gpa, bytes: usize| {
            let value = *self.entries.get(&gpa.0).unwrap_or(&0);
            (gpa.0 + bytes as u64 <= self.end).then_some(if bytes == 4 {
                value & 0xffff_ffff
            } else {
                value
            })
        };
        translate(state, linear, &mut read).map(|gpa| gpa.0)
    }
}

fn paged(cr3: u64, cr4: u64, efer: u64) -> VcpuState {
    let mut state = after_init();
    state.cr0 |= CR0_PE | CR0_PG;
    state.cr3 = cr3;
    state.cr4 = cr4;
    state.efer = efer;
    state
}

/// The kernel's text at 0xffffffff81000000 through 4 levels: a 4 KiB
/// page, a 2 MiB page beside it, and a hole.
#[test]
fn four_level_paging_maps_small_and_large_pages_and_not_holes() {
    let kernel = 0xffff_ffff_8100_0000u64;
    let (pml4, pdpt, pd, pt) = (0x1000, 0x2000, 0x3000, 0x4000);
    let mut tables = Tables::new();
    tables
        .set(pml4 + ((kernel >> 39) & 0x1ff) * 8, pdpt | 0x63)
        .set(pdpt + ((kernel >> 30) & 0x1ff) * 8, pd | 0x63)
        .set(pd + ((kernel >> 21) & 0x1ff) * 8, pt | 0x63)
        .set(pt + ((kernel >> 12) & 0x1ff) * 8, 0x0123_4000 | 0x63)
        // The next 2 MiB: one large page, NX set (bit 63 is no address).
        .set(
            pd + (((kernel >> 21) + 1) & 0x1ff) * 8,
            1 << 63 | 0x0260_0000 | 0xe3,
        );
    let state = paged(pml4, CR4_PAE, EFER_LMA | 1 << 8);
    assert_eq!(tables.translate(&state, kernel + 0x123), Some(0x0123_4123));
    assert_eq!(
        tables.translate(&state, kernel + 0x20_0000 + 0x1_2345),
        Some(0x0261_2345)
    );
    assert_eq!(tables.translate(&state, kernel + 0x1000), None, "no PTE");
    assert_eq!(tables.translate(&state, kernel + 0x40_0000), None, "no PDE");
    assert_eq!(tables.translate(&state, 0x1000), None, "no PML4E");
}

#[test]
fn a_one_gib_page_and_five_level_paging_walk_as_the_mmu_does() {
    let linear = 0x0000_7f12_3456_789au64;
    let mut tables = Tables::new();
    tables
        .set(0x1000 + ((linear >> 39) & 0x1ff) * 8, 0x2000 | 1)
        .set(0x2000 + ((linear >> 30) & 0x1ff) * 8, 0x4000_0000 | 0x81);
    let state = paged(0x1000, CR4_PAE, EFER_LMA);
    assert_eq!(
        tables.translate(&state, linear),
        Some(0x4000_0000 + (linear & 0x3fff_ffff))
    );
    // The same tables one level down, under a PML5 at 0x5000.
    let la57 = 0xff12_3456_789a_bcdeu64;
    tables
        .set(0x5000 + ((la57 >> 48) & 0x1ff) * 8, 0x6000 | 1)
        .set(0x6000 + ((la57 >> 39) & 0x1ff) * 8, 0x7000 | 1)
        .set(0x7000 + ((la57 >> 30) & 0x1ff) * 8, 0x8000_0000 | 0x81);
    let state = paged(0x5000, CR4_PAE | CR4_LA57, EFER_LMA);
    assert_eq!(
        tables.translate(&state, la57),
        Some(0x8000_0000 + (la57 & 0x3fff_ffff))
    );
}

#[test]
fn pae_and_32_bit_paging_walk_their_own_formats() {
    let linear = 0xc012_3456u64;
    let mut tables = Tables::new();
    // PAE: cr3 points at a 32-byte PDPT; PDE for bits 21..30; a PTE.
    tables
        .set(0x1020 + 3 * 8, 0x2000 | 1)
        .set(0x2000 + ((linear >> 21) & 0x1ff) * 8, 0x3000 | 1)
        .set(0x3000 + ((linear >> 12) & 0x1ff) * 8, 0x0765_4000 | 1);
    let pae = paged(0x1020, CR4_PAE, 0);
    assert_eq!(tables.translate(&pae, linear), Some(0x0765_4456));

    // 32-bit: a directory of 4-byte entries, a 4 KiB table, and a 4 MiB
    // page once PSE is on.
    tables
        .set(0x9000 + (linear >> 22) * 4, 0xa000 | 1)
        .set(0xa000 + ((linear >> 12) & 0x3ff) * 4, 0x0055_5000 | 1)
        .set(0x9000 + ((linear >> 22) + 1) * 4, 0x0240_0000 | 0x81);
    let flat = paged(0x9000, 0, 0);
    assert_eq!(tables.translate(&flat, linear), Some(0x0055_5456));
    let pse = paged(0x9000, CR4_PSE, 0);
    assert_eq!(
        tables.translate(&pse, linear + 0x40_0000),
        Some(0x0240_0000 + (linear & 0x3f_ffff))
    );
    assert_eq!(
        tables.translate(&flat, linear + 0x40_0000),
        None,
        "without PSE the large bit is not looked at: the table at 0x2400000 is empty"
    );
}

#[test]
fn without_paging_a_linear_address_is_physical_and_real_mode_adds_cs() {
    let mut state = after_init();
    state.cr0 = 0;
    state.selectors[0] = 0x9a00;
    state.system = None;
    state.rip = 0x10;
    assert_eq!(code_address(&state), 0x9a010);
    assert_eq!(Tables::new().translate(&state, 0x9a010), Some(0x9a010));
}

#[test]
fn an_entry_outside_memory_ends_the_walk() {
    let mut tables = Tables::new();
    tables.end = 0x1000;
    let state = paged(0x2000, CR4_PAE, EFER_LMA);
    assert_eq!(tables.translate(&state, 0x1234), None);
}

/// The assembled guests' boot tables map memory one to one: the listing
/// reads the same bytes as before.
#[test]
fn the_assembled_guests_identity_map_translates_to_itself() {
    let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let mut memory = vec![0u8; MEMORY_BYTES_MIN as usize];
    write_identity_map(&mut memory, &shape);
    let state = initial_vcpu_state(&shape, 0);
    let mut read = |gpa: Gpa, bytes: usize| {
        let at = usize::try_from(gpa.0).ok()?;
        let word = memory.get(at..at + bytes)?;
        let mut full = [0u8; 8];
        full[..bytes].copy_from_slice(word);
        Some(u64::from_le_bytes(full))
    };
    assert_eq!(code_address(&state), state.rip);
    for address in [state.rip, 0x1234, MEMORY_BYTES_MIN - 1] {
        assert_eq!(translate(&state, address, &mut read), Some(Gpa(address)));
    }
}
