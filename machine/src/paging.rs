//! A vCPU's linear addresses in physical memory, walked in the guest's own
//! page tables as its MMU would walk them: what a listing of the code at a
//! vCPU's rip must read on a guest that pages (the Linux kernel runs at
//! 0xffffffff8...; the assembled guests map memory one to one).
//!
//! Read-only and without side effects: no accessed or dirty bits are set,
//! no fault is raised. A table the guest left half-built gives `None`, not
//! an error: this serves reports, not execution.

use crate::units::Gpa;
use crate::vcpu::VcpuState;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
/// A large page at this level (PDPTE: 1 GiB, PDE: 2 MiB or 4 MiB).
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bits 12..52 of a 64-bit entry: the next table's or the page's frame.
const FRAME_64: u64 = 0x000f_ffff_ffff_f000;

/// Reads one table entry of `bytes` (4 or 8) at a physical address;
/// `None` when it is outside memory.
pub type ReadEntry<'a> = dyn FnMut(Gpa, usize) -> Option<u64> + 'a;

/// The linear address of the vCPU's next instruction: rip in long mode's
/// 64-bit code, else cs's base plus rip (the selector shifted by 4 in real
/// mode when the state carries no segment bases, as the assembled guests'
/// does not).
pub fn code_address(state: &VcpuState) -> u64 {
    if state.efer & EFER_LMA != 0 && state.cr0 & CR0_PG != 0 {
        return state.rip;
    }
    let cs_base = match &state.system {
        Some(system) => system.segments[0].base,
        None if state.cr0 & CR0_PE == 0 => u64::from(state.selectors[0]) << 4,
        None => 0,
    };
    cs_base.wrapping_add(state.rip) & 0xffff_ffff
}

/// The physical address `linear` maps to under the vCPU's paging mode
/// (none, 32-bit with or without PSE, PAE, 4- or 5-level), or `None` when
/// an entry on the way is not present or unreadable.
pub fn translate(state: &VcpuState, linear: u64, read: &mut ReadEntry<'_>) -> Option<Gpa> {
    if state.cr0 & CR0_PG == 0 {
        return Some(Gpa(linear));
    }
    if state.efer & EFER_LMA != 0 {
        let levels = if state.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
        return walk_64(state.cr3 & FRAME_64, linear, levels, read);
    }
    if state.cr4 & CR4_PAE != 0 {
        // The PDPT: four entries at cr3 bits 5..32, indexed by bits 30..32.
        let pdpte = read(Gpa((state.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8), 8)?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        return walk_64(pdpte & FRAME_64, linear & 0x3fff_ffff, 2, read);
    }
    walk_32(state, linear & 0xffff_ffff, read)
}

/// 8-byte entries, 9 bits of the address per level, from the table at
/// `table` down `levels` levels; a large page ends the walk at the PDPT
/// (1 GiB) or the page directory (2 MiB).
fn walk_64(mut table: u64, linear: u64, levels: u32, read: &mut ReadEntry<'_>) -> Option<Gpa> {
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let entry = read(Gpa(table + ((linear >> shift) & 0x1ff) * 8), 8)?;
        if entry & PRESENT == 0 {
            return None;
        }
        let large = (level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0;
        if large || level == 1 {
            let offset = linear & ((1u64 << shift) - 1);
            return Some(Gpa((entry & FRAME_64 & !((1u64 << shift) - 1)) + offset));
        }
        table = entry & FRAME_64;
    }
    None
}

/// 32-bit paging: 4-byte entries, a directory and a table, 4 MiB pages
/// when CR4.PSE allows them.
fn walk_32(state: &VcpuState, linear: u64, read: &mut ReadEntry<'_>) -> Option<Gpa> {
    let pde = read(Gpa((state.cr3 & 0xffff_f000) + (linear >> 22) * 4), 4)?;
    if pde & PRESENT == 0 {
        return None;
    }
    if state.cr4 & CR4_PSE != 0 && pde & PAGE_SIZE_BIT != 0 {
        // Bits 13..21 are physical bits 32..40 (PSE-36).
        let high = ((pde >> 13) & 0xff) << 32;
        return Some(Gpa(high | (pde & 0xffc0_0000) | (linear & 0x3f_ffff)));
    }
    let pte = read(Gpa((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4), 4)?;
    if pte & PRESENT == 0 {
        return None;
    }
    Some(Gpa((pte & 0xffff_f000) | (linear & 0xfff)))
}

#[cfg(test)]
mod tests;
