//! Newtypes for the ids and quantities that cross the machine's boundary.

/// Size of one guest page in bytes: the unit of dirty tracking and of
/// checkpoint deltas.
pub const PAGE_SIZE: u64 = 4096;

/// A guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gpa(pub u64);

impl Gpa {
    /// The page this address lies in.
    pub fn page(self) -> PageIndex {
        PageIndex(u32::try_from(self.0 / PAGE_SIZE).expect("guest memory is below 16 TiB"))
    }
}

/// The index of a guest page (`Gpa / PAGE_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageIndex(pub u32);

impl PageIndex {
    /// The first address of this page.
    pub fn gpa(self) -> Gpa {
        Gpa(u64::from(self.0) * PAGE_SIZE)
    }
}

/// The index of a virtual CPU, `0..vcpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId(pub u16);

/// An x86 I/O port number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u16);

/// Guest time in nanoseconds since the machine was created. Engines define
/// how it advances: the emulated engine counts one nanosecond per retired
/// instruction (or idle slot), the KVM engine reads a host clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GuestNs(pub u64);

/// A count of guest instructions (or instruction-sized idle slots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instructions(pub u64);
