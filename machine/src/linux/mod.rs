//! An unmodified Linux kernel (a bzImage) booted by the x86 64-bit boot
//! protocol (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"):
//! the protected-mode kernel at its `code32_start`, the zero page
//! (`boot_params`: the image's setup header, an e820 map, the command line)
//! at [`ZERO_PAGE`], the boot vCPU in long mode at `startup_64`
//! (`code32_start + 0x200`) with rsi = the zero page, paging on with an
//! identity map covering the kernel, the zero page and the command line,
//! and a GDT with the flat `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18).
//!
//! linux-loader (rust-vmm) reads the bzImage and lays out the zero page
//! and command line; this module decides where things go and what the
//! machine looks like to the kernel: ACPI tables ([`acpi`]) name the
//! vCPUs' local APICs, the I/O APIC and the virtio-mmio devices, and an
//! MP table ([`mptable`]) says the same of the APICs for a kernel booted
//! with `acpi=off`. [`net`] is the host's end of the guest's network.

pub mod acpi;
pub mod mptable;
pub mod net;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::{initial_vcpu_state, put_u64, write_identity_map};
use crate::devices::{BlockStore, DeviceBus};
use crate::layout::{Shape, GDT, STACKS};
use crate::pc::lapic::Startup;
use crate::pc::Pc;
use crate::units::Gpa;
use crate::vcpu::{gpr, VcpuState};

/// The zero page (`struct boot_params`, 4 KiB).
pub const ZERO_PAGE: Gpa = Gpa(0x7000);
/// The kernel command line.
pub const CMDLINE: Gpa = Gpa(0x8000);
/// The longest command line, its NUL included (the kernel may accept
/// less: its setup header's `cmdline_size`).
pub const CMDLINE_BYTES_MAX: usize = 0x1000;
/// Where the boot protocol's 64-bit entry is, from the protected-mode
/// kernel's start.
pub const STARTUP_64_OFFSET: u64 = 0x200;
/// The boot protocol's code selector.
pub const BOOT_CS: u16 = 0x10;
/// The boot protocol's data selector.
pub const BOOT_DS: u16 = 0x18;

/// The command line for the emulated PC (no PIT, no PCI):
/// - `console=ttyS0,115200 earlyprintk=serial,ttyS0,115200`: the console
///   on COM1 (the decompressor's messages too), and the log from its
///   first line on through the early console, polled, no interrupt needed;
/// - `nokaslr`: the kernel decompresses to its preferred address, so a
///   rip in a report names the same code on every run and build;
/// - `pci=off`: there is no PCI host bridge to probe;
/// - `tsc_early_khz=1000000 tsc=reliable`: the TSC counts guest
///   nanoseconds (1 GHz), and there is no PIT or HPET to calibrate it
///   against, nor a second clocksource to watch it with;
/// - `no_timer_check`: skip the check that the timer interrupt arrives
///   through the I/O APIC/PIC path, which does not exist here;
/// - `8250.nr_uarts=1`: only COM1 is there;
/// - `cryptomgr.notests`: skip the crypto self-tests, 0.74 G emulated
///   instructions (about 14% of the boot to userspace) that test the
///   kernel's own cipher code, not the machine.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 \
     nokaslr pci=off tsc_early_khz=1000000 tsc=reliable no_timer_check 8250.nr_uarts=1 \
     cryptomgr.notests";

/// Where guest-linux/fetch-kernel.sh puts the pinned kernel's bzImage,
/// from the repository's root.
pub const KERNEL_PATH: &str = "guest-linux/kernel/vmlinuz-6.1.0-47-amd64";
/// Where guest-linux/build-initramfs.sh puts the initramfs, from the
/// repository's root.
pub const INITRAMFS_PATH: &str = "guest-linux/initramfs/initramfs.cpio";
/// The line the ledger service prints once it has replayed its journal
/// and bound its port (guest-linux/ledger/ledger.c): from then on it
/// answers.
pub const SERVING_LINE: &str = "lockstep-ledger: serving";

/// e820 types.
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const E820_ACPI: u32 = 3;
/// The usual low-memory hole: the EBDA, VGA memory and the BIOS ROMs,
/// from 639 KiB to 1 MiB.
const LOW_RAM_END: u64 = 0x9_fc00;
const HIGH_RAM_START: u64 = 0x10_0000;
/// The loader's id in `type_of_loader`: "undefined" (not a registered one).
const LOADER_UNDEFINED: u8 = 0xff;

/// Error loading a kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinuxError {
    /// linux-loader rejected the image or could not place it.
    #[error("bzImage: {0}")]
    Image(String),
    /// The command line is invalid or too long.
    #[error("command line: {0}")]
    Cmdline(String),
    /// The initramfs of this many bytes does not fit between the
    /// decompressed kernel and the top of memory.
    #[error("an initramfs of {0} bytes does not fit above the kernel")]
    Initramfs(u64),
    /// The kernel needs more memory to decompress itself into.
    #[error("the kernel needs {needed_bytes} bytes of memory, the machine has {memory_bytes}")]
    MemoryTooSmall {
        /// Where its decompressed image ends.
        needed_bytes: u64,
        /// The machine's memory.
        memory_bytes: u64,
    },
}

/// A kernel laid out in a machine's memory, ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxImage {
    /// The machine's memory at boot.
    pub memory: Vec<u8>,
    /// Each vCPU's registers at boot: the boot vCPU's at the kernel's
    /// entry, the application processors' after INIT
    /// ([`crate::pc::startup::after_init`]): they wait for the start-up
    /// IPI the kernel sends them (a platform of
    /// [`crate::pc::lapic::Startup::WaitingForSipi`]).
    pub vcpu_states: Vec<VcpuState>,
    /// Where the protected-mode kernel was loaded (`code32_start`).
    pub kernel_load: Gpa,
    /// The 64-bit entry (`startup_64`).
    pub entry: Gpa,
}

/// The e820 map of a machine of `shape`: RAM below the low-memory hole
/// but for the ACPI tables, the hole reserved, RAM from 1 MiB to the end
/// of memory.
pub fn e820_map(shape: &Shape) -> [(u64, u64, u32); 5] {
    let acpi_end = acpi::ACPI_TABLES.0 + acpi::ACPI_TABLES_BYTES_MAX;
    [
        (0, acpi::ACPI_TABLES.0, E820_RAM),
        (acpi::ACPI_TABLES.0, acpi::ACPI_TABLES_BYTES_MAX, E820_ACPI),
        (acpi_end, LOW_RAM_END - acpi_end, E820_RAM),
        (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
        (
            HIGH_RAM_START,
            shape.memory_bytes() - HIGH_RAM_START,
            E820_RAM,
        ),
    ]
}

/// Lays out the bzImage `kernel` with `cmdline` in a machine of `shape`,
/// and `initramfs` (a cpio archive) if given, at the top of memory.
pub fn load(
    shape: &Shape,
    kernel: &[u8],
    cmdline: &str,
    initramfs: Option<&[u8]>,
) -> Result<LinuxImage, LinuxError> {
    let bytes = usize::try_from(shape.memory_bytes()).expect("memory fits the host");
    let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), bytes)])
        .map_err(|e| LinuxError::Image(format!("guest memory: {e}")))?;
    let loaded = BzImage::load(
        &guest,
        None,
        &mut std::io::Cursor::new(kernel),
        Some(GuestAddress(HIGH_RAM_START)),
    )
    .map_err(|e| LinuxError::Image(e.to_string()))?;
    let mut header = loaded
        .setup_header
        .ok_or_else(|| LinuxError::Image("no setup header".to_string()))?;
    check_room(shape, &header)?;
    let capacity = CMDLINE_BYTES_MAX.min(header.cmdline_size as usize + 1);
    let line =
        Cmdline::try_from(cmdline, capacity).map_err(|e| LinuxError::Cmdline(e.to_string()))?;
    load_cmdline(&guest, GuestAddress(CMDLINE.0), &line)
        .map_err(|e| LinuxError::Cmdline(e.to_string()))?;

    if let Some(initramfs) = initramfs {
        let (at, size) = place_initramfs(shape, &header, initramfs.len(), loaded.kernel_end)?;
        guest
            .write_slice(initramfs, GuestAddress(u64::from(at)))
            .map_err(|e| LinuxError::Image(format!("initramfs: {e}")))?;
        header.ramdisk_image = at;
        header.ramdisk_size = size;
    }
    header.type_of_loader = LOADER_UNDEFINED;
    header.cmd_line_ptr = u32::try_from(CMDLINE.0).expect("low memory");
    let tables = acpi::acpi_tables(shape.vcpus());
    guest
        .write_slice(&tables.bytes, GuestAddress(acpi::ACPI_TABLES.0))
        .map_err(|e| LinuxError::Image(format!("ACPI tables: {e}")))?;
    let mut params = boot_params {
        hdr: header,
        acpi_rsdp_addr: tables.rsdp.0,
        ..boot_params::default()
    };
    let map = e820_map(shape);
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: kind,
        };
    }
    params.e820_entries = u8::try_from(map.len()).expect("five entries");
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE.0)),
        &guest,
    )
    .map_err(|e| LinuxError::Image(e.to_string()))?;

    guest
        .write_slice(
            &mptable::mp_table(shape.vcpus()),
            GuestAddress(mptable::MP_TABLE),
        )
        .map_err(|e| LinuxError::Image(format!("MP table: {e}")))?;
    let mut memory = vec![0u8; bytes];
    guest
        .read_slice(&mut memory, GuestAddress(0))
        .map_err(|e| LinuxError::Image(format!("guest memory: {e}")))?;
    write_identity_map(&mut memory, shape);
    write_boot_gdt(&mut memory);
    let kernel_load = Gpa(loaded.kernel_load.0);
    let entry = Gpa(kernel_load.0 + STARTUP_64_OFFSET);
    Ok(LinuxImage {
        memory,
        vcpu_states: std::iter::once(boot_vcpu_state(shape, entry))
            .chain((1..shape.vcpus()).map(|_| crate::pc::startup::after_init()))
            .collect(),
        kernel_load,
        entry,
    })
}

/// The devices of a Linux guest's machine: the PC platform (the vCPUs
/// past the first waiting for a start-up IPI, as on hardware) and the
/// virtio disk on `store` and NIC at [`net::GUEST_MAC`], whose clients
/// reach the guest over UDP. Every engine's Linux machine is built on it,
/// so the tests, `lockstep vm run` and the simulator see one machine.
pub fn linux_bus(vcpus: u16, store: Box<dyn BlockStore>) -> DeviceBus {
    DeviceBus::new(vcpus, store)
        .with_pc(Pc::new(vcpus, Startup::WaitingForSipi))
        .with_virtio(net::GUEST_MAC)
}

/// The kernel decompresses itself to its preferred address (with
/// `nokaslr`, or higher if loaded higher) and needs `init_size` there.
fn check_room(
    shape: &Shape,
    header: &linux_loader::loader::bootparam::setup_header,
) -> Result<(), LinuxError> {
    let start = header.pref_address.max(u64::from(header.code32_start));
    let needed_bytes = start.saturating_add(u64::from(header.init_size));
    if needed_bytes > shape.memory_bytes() {
        return Err(LinuxError::MemoryTooSmall {
            needed_bytes,
            memory_bytes: shape.memory_bytes(),
        });
    }
    Ok(())
}

/// Where the initramfs goes: page-aligned, as high as memory and the
/// kernel's `initrd_addr_max` allow, above the decompressed kernel.
fn place_initramfs(
    shape: &Shape,
    header: &linux_loader::loader::bootparam::setup_header,
    len: usize,
    kernel_end: u64,
) -> Result<(u32, u32), LinuxError> {
    let too_big = || LinuxError::Initramfs(len as u64);
    let size = u32::try_from(len).map_err(|_| too_big())?;
    let top = shape
        .memory_bytes()
        .min(u64::from(header.initrd_addr_max) + 1);
    let at = top.checked_sub(u64::from(size)).ok_or_else(too_big)? & !0xfff;
    let kernel_top = header
        .pref_address
        .max(u64::from(header.code32_start))
        .saturating_add(u64::from(header.init_size))
        .max(kernel_end);
    if at < kernel_top {
        return Err(too_big());
    }
    Ok((u32::try_from(at).map_err(|_| too_big())?, size))
}

/// The boot GDT: null, unused, `__BOOT_CS` (64-bit code: the kernel is
/// entered in long mode), `__BOOT_DS` (flat data).
const BOOT_GDT_ENTRIES: [u64; 4] = [0, 0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF];

fn write_boot_gdt(memory: &mut [u8]) {
    for (i, entry) in BOOT_GDT_ENTRIES.iter().enumerate() {
        put_u64(memory, GDT.0 + 8 * i as u64, *entry);
    }
}

/// The boot vCPU at `startup_64`: the machine's long-mode state (its page
/// tables, CR0/CR4/EFER, interrupts off) with the boot protocol's
/// selectors and rsi = the zero page. The stack is the boot vCPU's usual
/// one; the kernel sets its own before it uses much.
fn boot_vcpu_state(shape: &Shape, entry: Gpa) -> VcpuState {
    let mut state = initial_vcpu_state(shape, 0);
    state.rip = entry.0;
    state.gprs[gpr::RSI] = ZERO_PAGE.0;
    state.gprs[gpr::RDI] = 0;
    state.selectors = [BOOT_CS, BOOT_DS, BOOT_DS, BOOT_DS, BOOT_DS, BOOT_DS];
    state.gdt_limit = u16::try_from(BOOT_GDT_ENTRIES.len() * 8 - 1).expect("tiny GDT");
    state
}

// The GDT, the zero page, the command line and the ACPI tables lie below
// the stacks, apart.
const _: () = {
    assert!(mptable::MP_TABLE >= LOW_RAM_END);
    assert!(mptable::MP_TABLE + mptable::MP_TABLE_BYTES_MAX as u64 <= 0xa_0000);
    assert!(GDT.0 + 0x1000 <= ZERO_PAGE.0);
    assert!(ZERO_PAGE.0 + 0x1000 <= CMDLINE.0);
    assert!(CMDLINE.0 + CMDLINE_BYTES_MAX as u64 <= acpi::ACPI_TABLES.0);
    assert!(acpi::ACPI_TABLES.0 + acpi::ACPI_TABLES_BYTES_MAX <= STACKS.0);
};

#[cfg(test)]
mod tests;
