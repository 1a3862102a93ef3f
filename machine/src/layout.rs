//! The guest-physical memory map shared by every engine.
//!
//! ```text
//! 0x0000_0000  null page, left zero so a null dereference reads zeros
//! 0x0000_1000  GDT: null, 64-bit code (0x08), data (0x10)
//! 0x0000_2000  PML4, 0x3000 PDPT, 0x4000 PD: 2 MiB pages, identity map
//! 0x0000_5000  boot info (BootInfo): vCPU count, memory size, guest params
//! 0x0001_0000  vCPU stacks, STACK_BYTES each, vCPU i's top at STACKS + (i+1)*STACK_BYTES
//! 0x0010_0000  guest code (GUEST_CODE_BYTES_MAX)
//! 0x0020_0000  guest data, up to the end of memory
//! ```

use crate::units::{Gpa, PAGE_SIZE};

/// The GDT's address.
pub const GDT: Gpa = Gpa(0x1000);
/// The top-level page table's address (loaded into CR3).
pub const PML4: Gpa = Gpa(0x2000);
/// The page-directory-pointer table's address.
pub const PDPT: Gpa = Gpa(0x3000);
/// The page directory's address: 512 entries of 2 MiB pages, 1 GiB.
pub const PD: Gpa = Gpa(0x4000);
/// The boot info page's address.
pub const BOOT_INFO: Gpa = Gpa(0x5000);
/// The first vCPU stack's lowest address.
pub const STACKS: Gpa = Gpa(0x1_0000);
/// Bytes of stack per vCPU.
pub const STACK_BYTES: u64 = 0x2000;
/// Where guest code is loaded and where every vCPU starts.
pub const GUEST_CODE: Gpa = Gpa(0x10_0000);
/// The largest guest image.
pub const GUEST_CODE_BYTES_MAX: u64 = 0x10_0000;
/// Where guest data starts.
pub const GUEST_DATA: Gpa = Gpa(0x20_0000);

/// The selector of the 64-bit code segment in the GDT.
pub const CODE_SELECTOR: u16 = 0x08;
/// The selector of the data segment in the GDT.
pub const DATA_SELECTOR: u16 = 0x10;

/// The most vCPUs a machine has.
pub const VCPUS_MAX: u16 = 8;
/// The smallest guest memory.
pub const MEMORY_BYTES_MIN: u64 = 4 << 20;
/// The largest guest memory: the identity map covers 1 GiB.
pub const MEMORY_BYTES_MAX: u64 = 1 << 30;
/// Memory sizes are a multiple of this (one 2 MiB page-table entry).
pub const MEMORY_BYTES_ALIGN: u64 = 2 << 20;

// The regions do not overlap; checked at compile time.
const _: () = {
    assert!(BOOT_INFO.0 + PAGE_SIZE <= STACKS.0);
    assert!(STACKS.0 + VCPUS_MAX as u64 * STACK_BYTES <= GUEST_CODE.0);
    assert!(GUEST_CODE.0 + GUEST_CODE_BYTES_MAX <= GUEST_DATA.0);
    assert!(GUEST_DATA.0 < MEMORY_BYTES_MIN);
};

/// Error for a machine shape outside the supported range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// vCPU count not in `1..=VCPUS_MAX`.
    #[error("vcpus must be 1..={VCPUS_MAX}, got {0}")]
    Vcpus(u16),
    /// Memory size out of range or misaligned.
    #[error("memory must be a multiple of 2 MiB in 4 MiB..=1 GiB, got {0} bytes")]
    Memory(u64),
}

/// The shape of a machine: how many vCPUs, how much memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    vcpus: u16,
    memory_bytes: u64,
}

impl Shape {
    /// A checked machine shape.
    pub fn new(vcpus: u16, memory_bytes: u64) -> Result<Shape, ShapeError> {
        if vcpus == 0 || vcpus > VCPUS_MAX {
            return Err(ShapeError::Vcpus(vcpus));
        }
        if !(MEMORY_BYTES_MIN..=MEMORY_BYTES_MAX).contains(&memory_bytes)
            || memory_bytes % MEMORY_BYTES_ALIGN != 0
        {
            return Err(ShapeError::Memory(memory_bytes));
        }
        Ok(Shape {
            vcpus,
            memory_bytes,
        })
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> u16 {
        self.vcpus
    }

    /// Guest memory size in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Number of guest pages.
    pub fn pages(&self) -> u32 {
        u32::try_from(self.memory_bytes / PAGE_SIZE).expect("memory is at most 1 GiB")
    }

    /// The initial stack pointer of a vCPU (stacks grow down).
    pub fn stack_top(&self, vcpu: u16) -> Gpa {
        assert!(vcpu < self.vcpus);
        Gpa(STACKS.0 + (u64::from(vcpu) + 1) * STACK_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_checked() {
        assert!(Shape::new(0, MEMORY_BYTES_MIN).is_err());
        assert!(Shape::new(9, MEMORY_BYTES_MIN).is_err());
        assert!(Shape::new(1, MEMORY_BYTES_MIN + 4096).is_err());
        assert!(Shape::new(1, MEMORY_BYTES_MAX * 2).is_err());
        let shape = Shape::new(8, MEMORY_BYTES_MIN).expect("valid");
        assert_eq!(shape.pages(), 1024);
        assert_eq!(shape.stack_top(7).0, STACKS.0 + 8 * STACK_BYTES);
    }
}
