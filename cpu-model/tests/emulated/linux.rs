// Debian's unmodified kernel on the emulated engine: the bzImage laid out
// by machine::linux (64-bit boot protocol), the PC platform on the bus
// (local APIC, I/O APIC, COM1), the console collected from COM1. The
// kernel is not in the repo: guest-linux/fetch-kernel.sh fetches it (or
// set LOCKSTEP_LINUX_KERNEL to a bzImage). These tests are #[ignore]d:
// run them with
//   cargo test --release -p cpu-model --test emulated linux -- --ignored --nocapture
// LOCKSTEP_LINUX_INSTRUCTIONS sets how far the measuring run goes;
// LOCKSTEP_LINUX_INITRAMFS=file boots with that initramfs (a cpio);
// LOCKSTEP_LINUX_CONSOLE=file saves its whole console; LOCKSTEP_LINUX_ECHO=1 prints the console as it comes, stamped with guest
// and wall time; LOCKSTEP_LINUX_APIC=1 the local APIC's timer each chunk.

use std::time::Instant;

use cpu_model::{Counting, DirtyTracking, EmuConfig, EmuEngine, Quantum};
use machine::devices::{BlockStore, DeviceBus, MemStore, BLOCK_BYTES};
use machine::linux::{load, DEFAULT_CMDLINE};
use machine::pc::lapic::Startup;
use machine::pc::Pc;
use machine::{Engine, Instructions, Machine, MachineError, Shape};

const KERNEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../guest-linux/kernel/vmlinuz-6.1.0-47-amd64"
);
/// The kernel decompresses itself to 16 MiB and needs 64 MiB there.
const MEMORY_BYTES: u64 = 256 << 20;
/// Instructions per run between looks at the console.
const CHUNK: u64 = 20_000_000;
/// How far the first-line test goes before it gives up.
const FIRST_LINE_INSTRUCTIONS_MAX: u64 = 6_000_000_000;
const FIRST_LINE: &str = "Linux version 6.1";
/// The last line of a boot without a root file system.
const END_OF_BOOT: &str = "end Kernel panic";

/// The kernel's bytes, or None after saying loudly how to fetch it.
fn kernel() -> Option<Vec<u8>> {
    let path = std::env::var("LOCKSTEP_LINUX_KERNEL").unwrap_or_else(|_| KERNEL.to_string());
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            eprintln!("==================================================================");
            eprintln!("SKIPPED: no Linux kernel at {path} ({error}).");
            eprintln!("Fetch it with guest-linux/fetch-kernel.sh (or set LOCKSTEP_LINUX_KERNEL).");
            eprintln!("==================================================================");
            None
        }
    }
}

/// The virtio disk's blocks: 1 MiB, its first sector naming it.
const DISK_BLOCKS: u64 = 2048;
const DISK_LABEL: &[u8] = b"LOCKSTEP-VDA";
/// The virtio NIC's MAC (locally administered).
const MAC: [u8; 6] = [0x02, 0x4c, 0x4b, 0x53, 0x54, 0x01];

fn disk() -> MemStore {
    let mut store = MemStore::new(DISK_BLOCKS);
    let mut first = [0u8; BLOCK_BYTES];
    first[..DISK_LABEL.len()].copy_from_slice(DISK_LABEL);
    store.write_block(0, &first).expect("in range");
    store
}

fn linux_machine(kernel: &[u8], seed: u64) -> Machine<EmuEngine> {
    let shape = Shape::new(1, MEMORY_BYTES).expect("valid");
    let initramfs = std::env::var_os("LOCKSTEP_LINUX_INITRAMFS")
        .map(|path| std::fs::read(&path).expect("reads the initramfs"));
    let image =
        load(&shape, kernel, DEFAULT_CMDLINE, initramfs.as_deref()).expect("the kernel loads");
    let config = EmuConfig {
        seed,
        quantum: Quantum::default(),
        counting: Counting::Slices,
    };
    let mut engine =
        EmuEngine::boot(shape, &image.memory, image.vcpu_states, config).expect("boots");
    // The kernel writes most of its 80 MiB once while it decompresses;
    // these runs take no checkpoint.
    engine
        .set_dirty_tracking(DirtyTracking::EveryPage)
        .expect("switches");
    let bus = DeviceBus::new(1, Box::new(disk()))
        .with_pc(Pc::new(1, Startup::Running))
        .with_virtio(MAC);
    Machine::new(shape, engine, bus)
}

/// A run of the kernel: its console, how far it got, and how it ended.
struct Boot {
    machine: Machine<EmuEngine>,
    console: Vec<u8>,
    /// Guest instructions (guest ns) and wall seconds when `FIRST_LINE`
    /// was first complete on the console.
    first_line: Option<(u64, f64)>,
    /// The engine's error, if the run ended in one.
    error: Option<MachineError>,
}

impl Boot {
    fn now(&self) -> u64 {
        self.machine.engine().now().0
    }
}

/// Runs the kernel until `until(console)` or `instructions_max`.
fn run(kernel: &[u8], seed: u64, instructions_max: u64, until: impl Fn(&[u8]) -> bool) -> Boot {
    let started = Instant::now();
    let mut boot = Boot {
        machine: linux_machine(kernel, seed),
        console: Vec::new(),
        first_line: None,
        error: None,
    };
    while boot.now() < instructions_max && !until(&boot.console) {
        let budget = CHUNK.min(instructions_max - boot.now());
        if let Err(error) = boot.machine.run(Instructions(budget)) {
            boot.error = Some(error);
        }
        if std::env::var_os("LOCKSTEP_LINUX_APIC").is_some() {
            // The local APIC's timer each chunk: whether the kernel's tick
            // is armed and moving.
            let now = boot.now();
            if let Some(pc) = boot.machine.bus().pc() {
                let lapic = pc.lapic(machine::VcpuId(0));
                eprintln!(
                    "apic at {now}: enabled {} tsc_deadline {} next {:?} isr {:?} irr {:?}",
                    lapic.enabled(),
                    lapic.tsc_deadline(),
                    pc.next_deadline(),
                    lapic.isr(),
                    lapic.irr()
                );
            }
        }
        let new = boot.machine.bus().console.take();
        if std::env::var_os("LOCKSTEP_LINUX_ECHO").is_some() && !new.is_empty() {
            // Each chunk's console bytes, stamped: how far the boot got when.
            eprintln!(
                "[{:>12} ns, {:>6.1} s] {}",
                boot.now(),
                started.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&new).trim_end()
            );
        }
        boot.console.extend(new);
        if boot.first_line.is_none() && first_line(&boot.console).is_some() {
            boot.first_line = Some((boot.now(), started.elapsed().as_secs_f64()));
        }
        if boot.error.is_some() {
            break;
        }
    }
    boot
}

/// The console's line that starts with `FIRST_LINE`, once complete.
fn first_line(console: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(console);
    let at = text.find(FIRST_LINE)?;
    let end = text[at..].find('\n')?;
    Some(text[at..at + end].trim_end().to_string())
}

fn report(boot: &mut Boot, wall_s: f64) {
    let state = boot.machine.engine().vcpu_state(machine::VcpuId(0));
    let text = String::from_utf8_lossy(&boot.console).to_string();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("---- console, last lines of {} ----", lines.len());
    for line in lines.iter().skip(lines.len().saturating_sub(25)) {
        eprintln!("| {line}");
    }
    eprintln!("---- end of console ----");
    eprintln!(
        "guest instructions (ns): {}; wall: {wall_s:.1} s; engine: {:?}",
        boot.now(),
        boot.machine.engine().stats()
    );
    if let Some((at, wall)) = boot.first_line {
        eprintln!("first line at {at} instructions, {wall:.1} s wall");
    }
    if let Ok(state) = state {
        eprintln!(
            "vCPU 0: rip {:#x} rflags {:#x} cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
            state.rip, state.rflags, state.cr0, state.cr3, state.cr4, state.efer
        );
        eprintln!("gprs {:x?}", state.gprs);
        if let Some(system) = &state.system {
            eprintln!(
                "cr2 {:#x} idt {:x?} cs {:x?}",
                system.cr2, system.idt, system.segments[0]
            );
        }
    }
    if let Some(virtio) = boot.machine.bus().virtio() {
        eprintln!(
            "virtio: {:?}; block status {:#x}, net status {:#x}",
            virtio.counts(),
            virtio.block.transport().status(),
            virtio.net.transport().status()
        );
    }
    if let Some(error) = &boot.error {
        eprintln!("run ended in an error: {error}");
    }
}

#[test]
#[ignore = "needs guest-linux/fetch-kernel.sh's kernel; minutes of emulation"]
fn debians_kernel_prints_its_first_console_line_over_com1_deterministically() {
    let Some(kernel) = kernel() else { return };
    let started = Instant::now();
    let mut one = run(&kernel, 5, FIRST_LINE_INSTRUCTIONS_MAX, |c| {
        first_line(c).is_some()
    });
    report(&mut one, started.elapsed().as_secs_f64());
    let line = first_line(&one.console).expect("the kernel's first console line");
    assert!(line.starts_with(FIRST_LINE), "{line}");
    assert!(one.error.is_none(), "{:?}", one.error);
    // The same seed to the same instruction: the same console, the same
    // state.
    let at = one.now();
    let mut two = run(&kernel, 5, at, |_| false);
    assert_eq!(two.now(), at);
    assert_eq!(one.console, two.console);
    let (hash_one, hash_two) = (
        one.machine.state_hash().expect("hash"),
        two.machine.state_hash().expect("hash"),
    );
    assert_eq!(hash_one, hash_two);
}

/// How far the boot gets: runs to the panic that ends a boot without a
/// root file system, LOCKSTEP_LINUX_INSTRUCTIONS (default 20 G) or an
/// error, and reports the figures and the last console lines.
#[test]
#[ignore = "needs guest-linux/fetch-kernel.sh's kernel; a measurement, not a check"]
fn how_far_debians_kernel_boots() {
    let Some(kernel) = kernel() else { return };
    let instructions_max = std::env::var("LOCKSTEP_LINUX_INSTRUCTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000_000_000u64);
    let started = Instant::now();
    let mut boot = run(&kernel, 5, instructions_max, |console| {
        // Without a root file system the boot ends in this panic (and the
        // kernel then spins in it).
        String::from_utf8_lossy(console).contains(END_OF_BOOT)
    });
    report(&mut boot, started.elapsed().as_secs_f64());
    if let Some(path) = std::env::var_os("LOCKSTEP_LINUX_CONSOLE") {
        std::fs::write(&path, &boot.console).expect("writes the console");
    }
}
